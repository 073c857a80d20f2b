"""outbox without NOTIFY: the service wakes its own relays after committing events"""

from meshkit.migrations import create_outbox_notify_trigger, drop_outbox_notify_trigger

revision = "f81570ae3a82"
down_revision = "ef33e64622fe"

# A notifying commit serialises on a cluster-wide lock and wakes a listening backend: half as
# much again of PostgreSQL's CPU per insert (docs/events.md).
upgrade = drop_outbox_notify_trigger
downgrade = create_outbox_notify_trigger
