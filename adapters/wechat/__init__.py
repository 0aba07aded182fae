"""WeChat Official Account (``adapters.wechat:WeChatAdapter``).

- ``protocol``: signatures, safe-mode AES, the XML of pushes and passive replies; no I/O (the
  fake uses it too).
- ``adapter``: URL verification, pushes turned into tickets, acknowledgements as passive replies.
"""

from intake_adapters.wechat.adapter import WeChatAdapter, WeChatConfig

__all__ = ["WeChatAdapter", "WeChatConfig"]
