"""WeChat Official Account message push: signatures, safe-mode crypto, payload parsing, replies.

Pure protocol code with no I/O, shared by the ``wechat`` adapter and the test fake.

How WeChat talks to us:

* **URL verification**: ``GET ?signature&timestamp&nonce&echostr``. ``signature`` is
  ``sha1(''.join(sorted([token, timestamp, nonce])))`` in hex; the server answers ``echostr``
  verbatim when it matches (:func:`check_signature`).
* **Push**: ``POST`` with the same three query parameters (and ``openid``). In plain mode the body
  is the message XML. In safe mode (``encrypt_type=aes``) the body is
  ``<xml><ToUserName/><Encrypt/></xml>`` and ``msg_signature`` =
  ``sha1(''.join(sorted([token, timestamp, nonce, Encrypt])))`` authenticates the ciphertext
  (:class:`WeChatCrypto`). Compatibility mode sends both: the plain fields and ``Encrypt``.
* **Passive reply**: the HTTP response body, within 5 seconds, either the reply XML
  (:func:`render_text_reply`), the string ``success`` or an empty body (no reply). In safe mode the
  reply XML is itself encrypted (:meth:`WeChatCrypto.render_encrypted_reply`).

WeChat also documents a JSON body for the same pushes (the account's "data format" setting; the
newer Official Account pages show JSON examples while the older configuration page says XML only).
:func:`parse_push` accepts either; replies are always rendered as XML.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import re
import secrets
import struct
import xml.sax
import xml.sax.handler
from collections.abc import Mapping
from typing import Any

import msgspec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.expatreader import DefusedExpatParser

from gateway.errors import ConfigError, Forbidden, RejectedInput, TooLarge

__all__ = [
    "WeChatCrypto",
    "WeChatPush",
    "check_signature",
    "compute_signature",
    "escape_cdata",
    "parse_push",
    "parse_push_json",
    "parse_push_xml",
    "render_text_reply",
    "render_xml",
    "to_push",
]

_BOM = b"\xef\xbb\xbf"
_BLOCK = 32  # WeChat pads to 32 bytes although AES blocks are 16 (its PKCS#7 variant)
_MAX_DEPTH = 8  # real pushes nest two or three levels; deeper is an attack or not WeChat


# -- signatures ---------------------------------------------------------------------------------


def compute_signature(*parts: str) -> str:
    """Return WeChat's signature: hex ``sha1`` of the parts sorted and concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def check_signature(token: str, timestamp: str, nonce: str, signature: str) -> bool:
    """True when ``signature`` is WeChat's plain-mode signature over token, timestamp and nonce.

    The comparison is constant-time; a missing or non-ASCII signature is simply False.
    """
    return _same(compute_signature(token, timestamp, nonce), signature)


def _same(expected: str, received: str | None) -> bool:
    if not received:
        return False
    # compare_digest needs both sides ASCII as str; bytes avoid a TypeError on junk input
    return hmac.compare_digest(expected.encode("ascii"), received.encode("utf-8", "replace"))


# -- safe mode ----------------------------------------------------------------------------------


class WeChatCrypto:
    """Safe-mode message crypto (WeChat's WXBizMsgCrypt), for one account.

    ``encoding_aes_key`` is the 43-character EncodingAESKey; the AES-256 key is its base64 decoding
    (after appending ``=``), the CBC IV is the key's first 16 bytes. The plaintext is
    ``random(16) + len(msg) as 4 bytes big-endian + msg + app_id``, padded PKCS#7-style to a
    multiple of 32 bytes. ``app_id`` is the account's AppID (the CorpID for WeCom).
    """

    def __init__(self, token: str, encoding_aes_key: str, app_id: str) -> None:
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError("wechat encoding_aes_key is not valid base64") from exc
        if len(encoding_aes_key) != 43 or len(key) != 32:
            raise ConfigError("wechat encoding_aes_key must be 43 characters (a 256-bit key)")
        if not token or not app_id:
            raise ConfigError("wechat token and app_id are required for safe mode")
        self.token = token
        self.app_id = app_id
        self._app_id_bytes = app_id.encode("utf-8")
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(key[:16]))

    def signature(self, timestamp: str, nonce: str, encrypt_b64: str) -> str:
        """Return ``msg_signature`` for a ciphertext."""
        return compute_signature(self.token, timestamp, nonce, encrypt_b64)

    def decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypt_b64: str) -> bytes:
        """Verify ``msg_signature`` and return the message inside ``encrypt_b64``.

        Raises :class:`~gateway.errors.Forbidden` for a wrong signature, a ciphertext that does not
        decrypt to the documented layout, or a message addressed to another AppID.
        """
        # Signature first: nothing about the ciphertext is examined unless the sender knows the
        # token, so the padding checks below cannot serve as an oracle.
        if not _same(self.signature(timestamp, nonce, encrypt_b64), msg_signature):
            raise Forbidden("WeChat msg_signature does not match")
        try:
            raw = base64.b64decode(encrypt_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Forbidden("WeChat Encrypt is not valid base64") from exc
        if not raw or len(raw) % 16:
            raise Forbidden("WeChat Encrypt has an impossible length")
        decryptor = self._cipher.decryptor()
        padded = decryptor.update(raw) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise Forbidden("WeChat Encrypt has bad padding")
        plain = padded[:-pad]
        if len(plain) < 20:
            raise Forbidden("WeChat Encrypt is too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise Forbidden("WeChat Encrypt has a bad length field")
        message, receiver = plain[20 : 20 + length], plain[20 + length :]
        if not hmac.compare_digest(receiver, self._app_id_bytes):
            raise Forbidden("WeChat message is addressed to another AppID")
        return message

    def encrypt(self, plain: bytes, nonce: str, timestamp: str) -> tuple[str, str]:
        """Encrypt ``plain`` for this account; return ``(encrypt_b64, msg_signature)``."""
        body = secrets.token_bytes(16) + struct.pack(">I", len(plain)) + plain + self._app_id_bytes
        pad = _BLOCK - len(body) % _BLOCK
        encryptor = self._cipher.encryptor()
        raw = encryptor.update(body + bytes([pad]) * pad) + encryptor.finalize()
        encrypt_b64 = base64.b64encode(raw).decode("ascii")
        return encrypt_b64, self.signature(timestamp, nonce, encrypt_b64)

    def render_encrypted_reply(self, plain_xml: bytes, nonce: str, timestamp: str) -> bytes:
        """Wrap a passive reply for safe mode: ``<xml><Encrypt/><MsgSignature/>...</xml>``."""
        encrypt_b64, signature = self.encrypt(plain_xml, nonce, timestamp)
        return render_xml(
            {
                "Encrypt": encrypt_b64,
                "MsgSignature": signature,
                "TimeStamp": timestamp,
                "Nonce": nonce,
            }
        )


# -- parsing ------------------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "pieces", "tag")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.children: list[_Node] = []
        self.pieces: list[tuple[bool, str]] = []  # (inside CDATA, text)

    def value(self) -> str:
        # Text inside CDATA is the sender's, kept verbatim; text outside it is layout (newlines,
        # tabs, indentation around the CDATA), trimmed. Adjacent outside pieces are joined first
        # so that "a &amp; b" keeps its inner spaces.
        out: list[str] = []
        run: list[str] = []
        for in_cdata, text in self.pieces:
            if in_cdata:
                out.append("".join(run).strip())
                run = []
                out.append(text)
            else:
                run.append(text)
        out.append("".join(run).strip())
        return "".join(out)


class _TreeBuilder(xml.sax.handler.ContentHandler, xml.sax.handler.LexicalHandler):
    def __init__(self) -> None:
        super().__init__()
        self.root: _Node | None = None
        self._stack: list[_Node] = []
        self._in_cdata = False

    def startElement(self, name: str, attrs: Any) -> None:
        node = _Node(name)
        if self._stack:
            self._stack[-1].children.append(node)
        elif self.root is None:
            self.root = node
        self._stack.append(node)
        if len(self._stack) > _MAX_DEPTH:
            raise RejectedInput("WeChat XML is nested too deeply")

    def endElement(self, name: str) -> None:
        self._stack.pop()

    def characters(self, content: str) -> None:
        if self._stack:
            self._stack[-1].pieces.append((self._in_cdata, content))

    def startCDATA(self) -> None:
        self._in_cdata = True

    def endCDATA(self) -> None:
        self._in_cdata = False

    def startDTD(self, name: str, public_id: str | None, system_id: str | None) -> None:
        # defusedxml already refuses this; a second lock costs nothing
        raise RejectedInput("XML with a DTD is not accepted")

    def endDTD(self) -> None:
        pass

    def comment(self, content: str) -> None:
        pass


def _flatten(
    node: _Node, prefix: str, out: dict[str, str], aliases: dict[str, list[str]], *, top: bool
) -> None:
    counts: dict[str, int] = {}
    for child in node.children:
        counts[child.tag] = counts.get(child.tag, 0) + 1
    seen: dict[str, int] = {}
    for child in node.children:
        if counts[child.tag] > 1:
            if top:
                # Two <Content> or two <FromUserName> at the top are never WeChat; picking one
                # would let a crafted body show one value to the signature check and another here.
                raise RejectedInput(f"WeChat XML repeats the element {child.tag}", field=child.tag)
            index = seen.get(child.tag, 0)
            seen[child.tag] = index + 1
            name = f"{child.tag}[{index}]"
        else:
            name = child.tag
        key = f"{prefix}{name}"
        if child.children:
            _flatten(child, f"{key}.", out, aliases, top=False)
        else:
            out[key] = child.value()
            if not top:
                aliases.setdefault(child.tag, []).append(out[key])


def parse_push_xml(body: bytes, max_bytes: int) -> dict[str, str]:
    """Parse a push body ``<xml>...</xml>`` into a flat ``{element: text}`` dict.

    * A DTD, an entity declaration or any entity other than the five predefined ones is refused
      (no XXE, no billion laughs); so is malformed XML, a root other than ``<xml>``, nesting deeper
      than 8 levels, or a top-level element given twice. All raise
      :class:`~gateway.errors.RejectedInput`; a body over ``max_bytes`` raises
      :class:`~gateway.errors.TooLarge`.
    * A UTF-8 byte-order mark is allowed. CDATA content is kept verbatim; whitespace outside CDATA
      (indentation, tabs, newlines around a CDATA section) is trimmed.
    * Nested elements are flattened with dotted keys (``ScanCodeInfo.ScanType``) and, when the
      name occurs once and no top-level element has it, also under their own name
      (``ScanType``). Repeated nested siblings are indexed
      (``SendPicsInfo.PicList.item[0].PicMd5Sum``). Attributes are ignored.
    """
    if len(body) > max_bytes:
        raise TooLarge(f"WeChat push body exceeds {max_bytes} bytes")
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    builder = _TreeBuilder()
    parser = DefusedExpatParser(forbid_dtd=True, forbid_entities=True, forbid_external=True)
    parser.setContentHandler(builder)
    parser.setProperty(xml.sax.handler.property_lexical_handler, builder)
    try:
        parser.parse(io.BytesIO(body))
    except DefusedXmlException as exc:
        raise RejectedInput("XML with a DTD or entity declarations is not accepted") from exc
    except xml.sax.SAXParseException as exc:
        raise RejectedInput(f"malformed XML: {exc.getMessage()}") from exc
    except ValueError as exc:  # expat: "multi-byte encodings are not supported" (GBK, Big5...)
        raise RejectedInput(f"malformed XML: {exc}") from exc
    root = builder.root
    if root is None or root.tag != "xml":
        raise RejectedInput("WeChat push must be an <xml> document")
    out: dict[str, str] = {}
    aliases: dict[str, list[str]] = {}
    _flatten(root, "", out, aliases, top=True)
    # A nested leaf is also reachable by its own name (ScanCodeInfo.ScanType as ScanType,
    # SendLocationInfo.Location_X as Location_X) when that name occurs once and is not taken.
    for name, values in aliases.items():
        if len(values) == 1:
            out.setdefault(name, values[0])
    return out


_json_decoder = msgspec.json.Decoder(dict[str, Any])


def _flatten_json(value: Any, key: str, out: dict[str, str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise RejectedInput("WeChat JSON is nested too deeply")
    if isinstance(value, dict):
        for name, item in value.items():
            _flatten_json(item, f"{key}.{name}" if key else str(name), out, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten_json(item, f"{key}[{index}]", out, depth + 1)
    elif isinstance(value, str):
        out[key] = value
    elif value is None:
        out[key] = ""
    elif isinstance(value, bool):
        out[key] = "true" if value else "false"
    else:
        # ints stay exact (16- and 19-digit MsgIds); floats keep Python's shortest repr
        out[key] = str(value)


def parse_push_json(body: bytes, max_bytes: int) -> dict[str, str]:
    """Parse a JSON-format push into the same flat ``{field: text}`` dict as the XML form.

    Numbers become their decimal text (``MsgId`` stays exact); nested objects are flattened with
    dotted keys and lists indexed, as in :func:`parse_push_xml`, up to the same depth. A UTF-8 BOM
    is allowed.
    """
    if len(body) > max_bytes:
        raise TooLarge(f"WeChat push body exceeds {max_bytes} bytes")
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    try:
        data = _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise RejectedInput(f"WeChat push is not a JSON object: {exc}") from exc
    except RecursionError as exc:  # msgspec's own guard against absurd nesting
        raise RejectedInput("WeChat JSON is nested too deeply") from exc
    out: dict[str, str] = {}
    _flatten_json(data, "", out)
    return out


def parse_push(body: bytes, max_bytes: int) -> dict[str, str]:
    """Parse a push in either data format, told apart by its first significant character."""
    head = body[len(_BOM) :] if body.startswith(_BOM) else body
    first = head.lstrip()[:1]
    if first == b"<":
        return parse_push_xml(body, max_bytes)
    if first == b"{":
        return parse_push_json(body, max_bytes)
    if len(body) > max_bytes:
        raise TooLarge(f"WeChat push body exceeds {max_bytes} bytes")
    raise RejectedInput("WeChat push is neither XML nor JSON")


# -- typed view ---------------------------------------------------------------------------------

_RENAMES = {
    "to_user": "ToUserName",
    "from_user": "FromUserName",
    "create_time": "CreateTime",
    "msg_type": "MsgType",
    "msg_id": "MsgId",
    "msg_data_id": "MsgDataId",
    "idx": "Idx",
    "content": "Content",
    "pic_url": "PicUrl",
    "media_id": "MediaId",
    "thumb_media_id": "ThumbMediaId",
    "format": "Format",
    "recognition": "Recognition",
    "location_x": "Location_X",
    "location_y": "Location_Y",
    "scale": "Scale",
    "label": "Label",
    "title": "Title",
    "description": "Description",
    "url": "Url",
    "event": "Event",
    "event_key": "EventKey",
    "ticket": "Ticket",
    "latitude": "Latitude",
    "longitude": "Longitude",
    "precision": "Precision",
    "encrypt": "Encrypt",
}


class WeChatPush(msgspec.Struct, frozen=True, kw_only=True, rename=_RENAMES):
    """The fields of a push the gateway reads, by their WeChat names (``ToUserName``...).

    ``to_user`` is the account's original id (``gh_...``), ``from_user`` the customer's OpenID.
    ``msg_id`` is text: it is an idempotency key, never arithmetic. Events have no ``msg_id``.
    ``location_x``/``location_y``/``scale``/``label`` belong to location messages,
    ``latitude``/``longitude``/``precision`` to the LOCATION event. Everything else the push
    carried is in ``extra`` under its WeChat name.
    """

    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    msg_id: str | None = None
    msg_data_id: str | None = None
    idx: str | None = None
    content: str | None = None
    pic_url: str | None = None
    media_id: str | None = None
    thumb_media_id: str | None = None
    format: str | None = None
    recognition: str | None = None
    location_x: float | None = None
    location_y: float | None = None
    scale: int | None = None
    label: str | None = None
    title: str | None = None
    description: str | None = None
    url: str | None = None
    event: str | None = None
    event_key: str | None = None
    ticket: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    precision: float | None = None
    encrypt: str | None = None
    extra: dict[str, str] = {}


_KNOWN = frozenset(_RENAMES.values())
# An empty optional number is "not given", not a reason to refuse the customer's message.
_OPTIONAL_NUMBERS = frozenset(
    {"Location_X", "Location_Y", "Scale", "Latitude", "Longitude", "Precision"}
)
_FIELD_IN_ERROR = re.compile(r"`\$\.(\w+)`|field `(\w+)`")


def to_push(fields: Mapping[str, str]) -> WeChatPush:
    """Convert a parsed push into :class:`WeChatPush`.

    Raises :class:`~gateway.errors.RejectedInput` naming the field when a required one
    (ToUserName, FromUserName, CreateTime, MsgType) is missing or a number does not parse.
    """
    known = {
        k: v
        for k, v in fields.items()
        if k in _KNOWN and not (k in _OPTIONAL_NUMBERS and not v.strip())
    }
    extra = {k: v for k, v in fields.items() if k not in _KNOWN}
    try:
        push = msgspec.convert(known, WeChatPush, strict=False)
    except msgspec.ValidationError as exc:
        match = _FIELD_IN_ERROR.search(str(exc))
        field = (match.group(1) or match.group(2)) if match else None
        raise RejectedInput(f"WeChat push has a bad field: {exc}", field=field) from exc
    return msgspec.structs.replace(push, extra=extra) if extra else push


# -- rendering ----------------------------------------------------------------------------------

# Characters XML 1.0 cannot carry at all, not even in CDATA: C0 controls except TAB/LF/CR, lone
# surrogates and the two non-characters U+FFFE/U+FFFF.
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape_cdata(text: str) -> str:
    """Return ``text`` as one or more CDATA sections that no content can break out of.

    ``]]>`` is split across two sections; characters XML cannot carry are dropped; CR and CRLF
    become LF, because XML parsers normalise line ends inside CDATA too.
    """
    text = _ILLEGAL_XML.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


_TAG = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def render_xml(fields: Mapping[str, str | int]) -> bytes:
    """Render a flat ``<xml>`` document the way WeChat writes them: text in CDATA, ints bare."""
    parts = ["<xml>"]
    for name, value in fields.items():
        if not _TAG.match(name):
            raise ValueError(f"not an XML element name: {name!r}")
        text = str(value) if isinstance(value, int) else escape_cdata(value)
        parts.append(f"<{name}>{text}</{name}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")


def render_text_reply(to_user: str, from_user: str, content: str, create_time: int) -> bytes:
    """Render the passive text reply.

    ``to_user`` is the customer's OpenID (the push's ``FromUserName``), ``from_user`` the
    account's id (the push's ``ToUserName``). In safe mode pass the result to
    :meth:`WeChatCrypto.render_encrypted_reply`.
    """
    return render_xml(
        {
            "ToUserName": to_user,
            "FromUserName": from_user,
            "CreateTime": create_time,
            "MsgType": "text",
            "Content": content,
        }
    )
