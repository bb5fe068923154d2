"""The OpenAI-compatible server and the playground page (``quicksilver serve``)."""
from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
