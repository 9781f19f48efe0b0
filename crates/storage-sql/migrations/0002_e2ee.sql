-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing, to-device
-- messages, device-list changes and key backups.
SELECT 1;
