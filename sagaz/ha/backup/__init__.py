"""Backups and point-in-time recovery of the local cluster with pgBackRest: the stanza and its
repository (:mod:`.repo`), the archive's health (:mod:`.archive`), restores and the restore
drill (:mod:`.restore`)."""
