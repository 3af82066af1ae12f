"""The HakuRiver Host: coordinator, state and public gRPC API."""
