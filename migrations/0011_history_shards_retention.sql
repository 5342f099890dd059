-- Where each conversation's history lives (worker/db/history.ts). Existing conversations keep
-- theirs in this database ('DB'); new ones are placed on the shards HISTORY_SHARDS names.
ALTER TABLE `conversations` ADD `history_shard` text DEFAULT 'DB' NOT NULL;--> statement-breakpoint
-- Retention (worker/conversation/retention.ts): the conversation's own setting, and when its
-- history is next due to expire, which the scheduled sweep looks up by this index.
ALTER TABLE `conversations` ADD `retention_days` integer;--> statement-breakpoint
ALTER TABLE `conversations` ADD `history_expires_at` integer;--> statement-breakpoint
CREATE INDEX `conversations_expiry_idx` ON `conversations` (`history_expires_at`) WHERE "conversations"."history_expires_at" IS NOT NULL;
