"""outbox without NOTIFY: the service wakes its own relays after committing events"""

from meshkit.migrations import create_outbox_notify_trigger, drop_outbox_notify_trigger

revision = "01f301790ec6"
down_revision = "ef8ab7000f28"

# A notifying commit serialises on a cluster-wide lock and wakes a listening backend: half as
# much again of PostgreSQL's CPU per insert (docs/events.md).
upgrade = drop_outbox_notify_trigger
downgrade = create_outbox_notify_trigger
