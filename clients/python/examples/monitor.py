"""
Example: Monitor deployment progress

The seed's example, against a stackpulse server: only the import and the endpoint
changed. Set STACKPULSE_ENDPOINT (default ws://127.0.0.1:8000/ws), STACKPULSE_TOKEN
(when the server has auth) and STACKPULSE_DEPLOYMENT (default D1BRV40). It stops when
the deployment reaches "deployed" or "failed" (the seed's runs until interrupted).
"""

import asyncio
import os
from typing import Any, Dict, Optional

from stackpulse_client import CloudWebSocketClient

# Cognito token (from authentication); a server without auth ignores it
JWT_TOKEN: Optional[str] = os.environ.get("STACKPULSE_TOKEN") or None

# WebSocket endpoint
ENDPOINT = os.environ.get("STACKPULSE_ENDPOINT", "ws://127.0.0.1:8000/ws")

DEPLOYMENT_ID = os.environ.get("STACKPULSE_DEPLOYMENT", "D1BRV40")

client: Optional[CloudWebSocketClient] = None


async def on_deployment_status(message: Dict[str, Any]) -> None:
    """Handle deployment status updates"""
    data = message['data']
    print(f"Deployment {message['deployment_id']}: {data['status']}")
    print(f"  Layer {data['current_layer']}/{data['total_layers']}")
    if data['status'] in ("deployed", "failed") and client is not None:
        await client.disconnect()


async def on_stack_deployed(message: Dict[str, Any]) -> None:
    """Handle stack deployed events"""
    data = message['data']
    print(f"✓ Stack {data['stack_name']}-{data['environment']} deployed")
    print(f"  Duration: {data['duration_seconds']}s")
    print(f"  Resources: {data['resource_count']}")


async def on_stack_failed(message: Dict[str, Any]) -> None:
    """Handle stack failed events"""
    data = message['data']
    print(f"✗ Stack {data['stack_name']}-{data['environment']} FAILED")
    print(f"  Error: {data['error_message']}")


async def main() -> None:
    global client

    # Create client
    client = CloudWebSocketClient(
        endpoint=ENDPOINT,
        token=JWT_TOKEN,
        auto_reconnect=True,
    )

    # Register handlers
    client.on("deployment.status", on_deployment_status)
    client.on("stack.deployed", on_stack_deployed)
    client.on("stack.failed", on_stack_failed)

    # Connect
    await client.connect()

    # Subscribe to deployment
    await client.subscribe(DEPLOYMENT_ID)

    # Run (blocking)
    print(f"Monitoring deployment {DEPLOYMENT_ID}...", flush=True)
    await client.run()


if __name__ == "__main__":
    asyncio.run(main())
