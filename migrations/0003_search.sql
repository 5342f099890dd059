-- Keyword search over message text. The trigram tokenizer matches any 3+ character substring,
-- which also serves Chinese and other scripts without word spaces; shorter queries fall back to LIKE.
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
