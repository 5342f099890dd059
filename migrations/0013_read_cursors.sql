CREATE TABLE `read_cursors` (
	`conversation_id` text NOT NULL,
	`user_id` text NOT NULL,
	`read_seq` integer NOT NULL,
	PRIMARY KEY(`conversation_id`, `user_id`)
);
