-- A history shard: the D1 mirror of the conversation logs placed on it (worker/db/history.ts).
-- One row per event; (conversation_id, seq) makes the rooms' inserts idempotent.
CREATE TABLE `messages` (
	`conversation_id` text NOT NULL,
	`seq` integer NOT NULL,
	`type` text NOT NULL,
	`sender_id` text NOT NULL,
	`client_msg_id` text NOT NULL,
	`kind` text,
	`body` text,
	`target_seq` integer,
	`edited_at` integer,
	`recalled_by` text,
	`recalled_by_admin` integer,
	`created_at` integer NOT NULL,
	PRIMARY KEY(`conversation_id`, `seq`)
);
--> statement-breakpoint
CREATE INDEX `messages_time_idx` ON `messages` (`conversation_id`, `created_at`);
--> statement-breakpoint
CREATE UNIQUE INDEX `messages_client_idx` ON `messages` (`conversation_id`, `sender_id`, `client_msg_id`);
--> statement-breakpoint
-- Keyword search: the trigram tokenizer matches any 3+ character substring, Chinese included.
CREATE VIRTUAL TABLE `messages_fts` USING fts5(`text`, `conversation_id` UNINDEXED, `seq` UNINDEXED, tokenize = 'trigram');
--> statement-breakpoint
CREATE TRIGGER `messages_fts_insert` AFTER INSERT ON `messages`
WHEN new.type = 'message' AND new.kind = 'text' AND new.body IS NOT NULL
BEGIN
  INSERT INTO messages_fts (rowid, text, conversation_id, seq) VALUES (new.rowid, json_extract(new.body, '$.text'), new.conversation_id, new.seq);
END;
--> statement-breakpoint
-- Edits rewrite the text; recalls erase it, and so take it out of the index.
CREATE TRIGGER `messages_fts_update` AFTER UPDATE OF `body` ON `messages`
BEGIN
  DELETE FROM messages_fts WHERE rowid = old.rowid;
  INSERT INTO messages_fts (rowid, text, conversation_id, seq)
    SELECT new.rowid, json_extract(new.body, '$.text'), new.conversation_id, new.seq
    WHERE new.type = 'message' AND new.kind = 'text' AND new.body IS NOT NULL;
END;
--> statement-breakpoint
-- Retention deletes expired rows; their text leaves the index with them.
CREATE TRIGGER `messages_fts_delete` AFTER DELETE ON `messages`
BEGIN
  DELETE FROM messages_fts WHERE rowid = old.rowid;
END;
