-- Where each conversation's history lives (worker/db/history.ts). Existing conversations keep
-- theirs in this database ('DB'); new ones are placed on the shards HISTORY_SHARDS names.
ALTER TABLE `conversations` ADD `history_shard` text DEFAULT 'DB' NOT NULL;--> statement-breakpoint
-- Retention (worker/conversation/retention.ts): the conversation's own setting, and when its
-- history is next due to expire, which the scheduled sweep looks up by this index (NULL included:
-- the sweep also finds conversations never measured against the default).
ALTER TABLE `conversations` ADD `retention_days` integer;--> statement-breakpoint
ALTER TABLE `conversations` ADD `history_expires_at` integer;--> statement-breakpoint
CREATE INDEX `conversations_expiry_idx` ON `conversations` (`history_expires_at`);--> statement-breakpoint
-- Retention deletes rows of the conversations whose history is here: their text leaves the index too.
CREATE TRIGGER `messages_fts_delete` AFTER DELETE ON `messages`
BEGIN
  DELETE FROM messages_fts WHERE rowid = old.rowid;
END;
