"""outbox without NOTIFY: the service wakes its own relays after committing events"""

from meshkit.migrations import create_outbox_notify_trigger, drop_outbox_notify_trigger

revision = "b2a5a9fbbc3c"
down_revision = "8c556771f545"

# A notifying commit serialises on a cluster-wide lock and wakes a listening backend: half as
# much again of PostgreSQL's CPU per insert (docs/events.md).
upgrade = drop_outbox_notify_trigger
downgrade = create_outbox_notify_trigger
