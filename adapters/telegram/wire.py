"""The narrow view of a Telegram Bot API update this adapter reads: msgspec Structs, no I/O.

Only the fields the adapter uses are declared; msgspec ignores the rest, so a new field in the
Bot API changes nothing here.
"""

from __future__ import annotations

import msgspec


class TgUser(msgspec.Struct, frozen=True):
    id: int
    is_bot: bool = False
    first_name: str = ""
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None


class TgChat(msgspec.Struct, frozen=True):
    id: int
    type: str = "private"


class TgFile(msgspec.Struct, frozen=True):
    """Any downloadable file: photo size, document, voice, audio, video, video note."""

    file_id: str
    file_unique_id: str = ""
    file_size: int | None = None
    file_name: str | None = None
    mime_type: str | None = None
    width: int = 0
    height: int = 0


class TgContact(msgspec.Struct, frozen=True):
    phone_number: str
    first_name: str = ""
    last_name: str | None = None
    user_id: int | None = None


class TgLocation(msgspec.Struct, frozen=True):
    latitude: float
    longitude: float


class TgReplied(msgspec.Struct, frozen=True):
    message_id: int
    from_: TgUser | None = msgspec.field(default=None, name="from")


class TgMessage(msgspec.Struct, frozen=True):
    message_id: int
    chat: TgChat
    date: int = 0
    from_: TgUser | None = msgspec.field(default=None, name="from")
    text: str | None = None
    caption: str | None = None
    photo: list[TgFile] = []
    document: TgFile | None = None
    voice: TgFile | None = None
    audio: TgFile | None = None
    video: TgFile | None = None
    video_note: TgFile | None = None
    contact: TgContact | None = None
    location: TgLocation | None = None
    edit_date: int | None = None
    reply_to_message: TgReplied | None = None


class TgUpdate(msgspec.Struct, frozen=True):
    update_id: int
    message: TgMessage | None = None
    edited_message: TgMessage | None = None


_decode_update = msgspec.json.Decoder(TgUpdate).decode
