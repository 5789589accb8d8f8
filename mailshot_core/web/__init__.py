"""The web app (FastAPI): ESP webhooks now; unsubscribe, tracking and admin pages join the same app."""
