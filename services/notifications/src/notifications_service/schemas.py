"""Response bodies of the notifications API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    type: str = Field(description="The event type that caused it, e.g. `order.created`.")
    message: str
    event_id: uuid.UUID = Field(description="The id of that event.")
    created_at: datetime
    read: bool
