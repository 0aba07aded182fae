"""The OpenAPI description of the WeChat Official Account server URL (gateway/plugin/openapi.py)."""

from __future__ import annotations

from gateway.plugin import Answer, Body, Operation, Param, refused

_SIGNED = (Param(name="timestamp", where="query", required=True, description="Unix seconds."),
           Param(name="nonce", where="query", required=True, description="WeChat's nonce."),
           Param(name="signature", where="query", required=True,
                 description="SHA-1 over the sorted token, timestamp and nonce."))
_REFUSED = (refused(400, "A required field is missing."),
            refused(403, "The signature, the timestamp or the replay guard refused it."))


def wechat_operations(path: str) -> list[Operation]:
    """GET answers the server configuration check, POST takes pushes."""
    p = "/" + path.strip("/")
    return [
        Operation(method="get", path=p, tag="wechat", summary="Server URL verification",
                  params=(*_SIGNED, Param(name="echostr", where="query", required=True,
                                          description="Echoed back once verified."),
                          Param(name="msg_signature", where="query",
                                description="Encrypted (WeCom-style) verification.")),
                  security=("wechatSignature",),
                  answers=(Answer(status=200, description="The echostr.",
                                  body=Body(media_type="text/plain")), *_REFUSED)),
        Operation(method="post", path=p, tag="wechat", summary="A push (message or event)",
                  description="Answered with the passive reply carrying the acknowledgement "
                              "(encrypted in safe mode), or `success`.",
                  params=(*_SIGNED,
                          Param(name="encrypt_type", where="query",
                                description="`aes` for encrypted pushes."),
                          Param(name="msg_signature", where="query",
                                description="Signature of an encrypted push.")),
                  body=Body(media_type="text/xml", schema={"type": "string"}),
                  security=("wechatSignature",),
                  answers=(Answer(status=200, description="The passive reply (XML) or "
                                  "`success`.", body=Body(media_type="application/xml")),
                           *_REFUSED)),
    ]
