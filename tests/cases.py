"""Inputs shared by unit and integration tests."""

# Callback URLs that must never be accepted: internal addresses in every spelling, and other schemes.
INTERNAL_CALLBACK_URLS = [
    "https://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1/hook",
    "https://localhost./hook",
    "https://[::1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "https://[fd00::1]/hook",
    "https://10.0.0.5/hook",
    "https://2852039166/hook",
    "https://0xA9FEA9FE/hook",
    "http://127.0.0.1:8080/hook",
    "https://user:pw@example.com/hook",
    "file:///etc/passwd",
    "gopher://example.com:70/_",
]

# A model registry with a second fleet: the default fleet's builtin "tiny", and "xl" on the fleet "large".
TWO_FLEET_REGISTRY = {
    "models": [
        {"id": "tiny", "source": "builtin:tiny", "revision": "1", "architecture": "tiny"},
        {
            "id": "xl",
            "source": "/models/xl",
            "revision": "r1",
            "checksums": {"unet/w.safetensors": "0" * 64},
            "architecture": "sdxl",
            "fleet": "large",
        },
    ]
}
