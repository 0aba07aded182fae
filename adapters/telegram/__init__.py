"""Telegram bot (``adapters.telegram:TelegramAdapter``).

- ``wire``: the update, message and file Structs the adapter decodes.
- ``adapter``: webhook or long polling, files, acknowledgements as replies in the chat.
"""

from intake_adapters.telegram.adapter import TelegramAdapter, TelegramConfig, safe_file_path

__all__ = ["TelegramAdapter", "TelegramConfig", "safe_file_path"]
