"""Realistic traffic for the mesh, through the gateway: browsing orders ≫ creating ≫ cancelling.

    locust -f tests/load/locustfile.py --host http://127.0.0.1:8000

Runs against `make run`, `make up` (compose profile `loadgen`) or a cluster's ingress, so traces
keep flowing into Jaeger. Each simulated user registers once, then behaves like a customer.
"""

from __future__ import annotations

import random
import uuid

from locust import FastHttpUser, between, task

PASSWORD = "load-test-password"


class Customer(FastHttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        email = f"load-{uuid.uuid4().hex[:16]}@example.com"
        self.client.post("/api/users", json={"email": email, "password": PASSWORD, "name": "Load"})
        response = self.client.post(
            "/api/auth/token", data={"username": email, "password": PASSWORD}
        )
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        self.order_ids: list[str] = []

    @task(20)
    def browse_orders(self) -> None:
        self.client.get("/api/orders?limit=20", headers=self.headers, name="/api/orders")

    @task(8)
    def view_order(self) -> None:
        if self.order_ids:
            self.client.get(
                f"/api/orders/{random.choice(self.order_ids)}",
                headers=self.headers,
                name="/api/orders/{id}",
            )

    @task(6)
    def read_notifications(self) -> None:
        self.client.get("/api/notifications", headers=self.headers)

    @task(4)
    def create_order(self) -> None:
        items = [
            {
                "sku": f"sku-{random.randint(1, 500)}",
                "quantity": random.randint(1, 5),
                "unit_price_cents": random.randint(100, 20_000),
            }
            for _ in range(random.randint(1, 4))
        ]
        response = self.client.post(
            "/api/orders",
            json={"items": items},
            headers={**self.headers, "Idempotency-Key": uuid.uuid4().hex},
        )
        if response.status_code == 201:
            self.order_ids.append(response.json()["id"])

    @task(1)
    def cancel_order(self) -> None:
        if self.order_ids:
            order_id = self.order_ids.pop(random.randrange(len(self.order_ids)))
            self.client.post(
                f"/api/orders/{order_id}/cancel",
                headers=self.headers,
                name="/api/orders/{id}/cancel",
            )
