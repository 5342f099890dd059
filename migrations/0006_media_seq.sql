ALTER TABLE `media` ADD `seq` integer;--> statement-breakpoint
ALTER TABLE `media` ADD `min_seq` integer;--> statement-breakpoint
-- Media already sent: the seq of the message that carries it, so later joiners are held to it too.
UPDATE `media` SET `seq` = (
  SELECT m.seq FROM `messages` m WHERE m.conversation_id = media.conversation_id
    AND (json_extract(m.body, '$.mediaId') = media.id OR json_extract(m.body, '$.thumbId') = media.id)
) WHERE `conversation_id` IS NOT NULL;
