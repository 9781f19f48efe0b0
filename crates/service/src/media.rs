//! The media repository: uploads, downloads, thumbnails, quotas and URL previews.
