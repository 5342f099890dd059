DROP INDEX `friend_requests_pending_pair`;--> statement-breakpoint
ALTER TABLE `friend_requests` ADD `pending_key` text;--> statement-breakpoint
UPDATE `friend_requests` SET `pending_key` = `from_id` || ':' || `to_id` WHERE `status` = 'pending';--> statement-breakpoint
CREATE UNIQUE INDEX `friend_requests_pending_key` ON `friend_requests` (`pending_key`);
