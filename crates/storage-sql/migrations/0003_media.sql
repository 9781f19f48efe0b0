-- Media: uploads, thumbnails, quotas and URL previews.
SELECT 1;
