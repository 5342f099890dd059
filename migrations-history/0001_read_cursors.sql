-- Read cursors beside the history they count unread messages of: a room writes them in the same
-- batch as its events (worker/conversation/ConversationRoom.ts flush), one D1 batch per tick.
CREATE TABLE `read_cursors` (
	`conversation_id` text NOT NULL,
	`user_id` text NOT NULL,
	`read_seq` integer NOT NULL,
	PRIMARY KEY(`conversation_id`, `user_id`)
);
