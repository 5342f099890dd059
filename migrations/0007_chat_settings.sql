ALTER TABLE `members` ADD `muted_until` integer;--> statement-breakpoint
ALTER TABLE `members` ADD `pinned_at` integer;--> statement-breakpoint
ALTER TABLE `members` ADD `archived_at` integer;--> statement-breakpoint
ALTER TABLE `sessions` ADD `place` text;