"""PayPal webhook verification: SHA256withRSA with PayPal's certificate (self-verification).

PayPal signs ``transmission_id|transmission_time|webhook_id|crc32`` where ``crc32`` is the CRC-32
of the raw body as an unsigned decimal, and ``webhook_id`` is *our* webhook's id (so an event
sent to another listener does not verify here). The signature (base64) is in
``PAYPAL-TRANSMISSION-SIG``; the certificate is downloaded from ``PAYPAL-CERT-URL``.

The certificate URL comes from the request, i.e. from whoever sent it. It is checked *before*
anything is fetched: https, host ``paypal.com`` or ``*.paypal.com``, default port, no user info.
Otherwise anyone could sign with their own key and point us at their own certificate (and make
us fetch arbitrary URLs). The fetcher is injected; certificates are cached per URL.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway_clients.paypal.translator import notification_from_event
from gateway_clients.protocol import GatewayNotification, InvalidWebhookError

__all__ = [
    "CertFetcher",
    "PayPalWebhookVerifier",
    "check_cert_url",
    "fetch_cert_over_https",
    "signed_message",
]

CertFetcher = Callable[[str], bytes]

H_TRANSMISSION_ID: Final = "paypal-transmission-id"
H_TRANSMISSION_TIME: Final = "paypal-transmission-time"
H_TRANSMISSION_SIG: Final = "paypal-transmission-sig"
H_CERT_URL: Final = "paypal-cert-url"
H_AUTH_ALGO: Final = "paypal-auth-algo"
_ALGORITHM: Final = "SHA256withRSA"
_ALLOWED_DOMAIN: Final = "paypal.com"
_CACHE_SIZE: Final = 16


def signed_message(transmission_id: str, transmission_time: str, webhook_id: str, raw_body: bytes) -> bytes:
    crc = zlib.crc32(raw_body) & 0xFFFFFFFF  # unsigned decimal, as PayPal computes it
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{crc}".encode()


def check_cert_url(url: str) -> str:
    """Return ``url`` if it may be fetched as PayPal's certificate; else InvalidWebhookError."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme != "https"
        or parts.username is not None
        or parts.password is not None
        or port not in (None, 443)
        or not (host == _ALLOWED_DOMAIN or host.endswith("." + _ALLOWED_DOMAIN))
    ):
        raise InvalidWebhookError("certificate URL is not on paypal.com over https", gateway_code="bad_cert_url")
    return url


def fetch_cert_over_https(url: str) -> bytes:
    """Default fetcher: plain GET, TLS verified, no redirects (a redirect could leave paypal.com)."""
    response = httpx.get(check_cert_url(url), timeout=5.0, follow_redirects=False)
    response.raise_for_status()
    return response.content


class PayPalWebhookVerifier:
    """Verifies PayPal webhook signatures for one ``webhook_id``.

    ``verify_and_parse`` is synchronous (the protocol's shape) and may call the fetcher on a
    cache miss; on an event loop, call it via ``asyncio.to_thread``.
    """

    def __init__(
        self,
        webhook_id: str,
        *,
        fetch_cert: CertFetcher = fetch_cert_over_https,
        tolerance_s: int | None = None,
    ) -> None:
        if not webhook_id:
            raise ValueError("webhook_id must not be empty")
        self._webhook_id = webhook_id
        self._fetch_cert = fetch_cert
        self._tolerance_s = tolerance_s
        self._certs: OrderedDict[str, x509.Certificate] = OrderedDict()

    def verify(self, raw_body: bytes, headers: Mapping[str, str], *, now: int) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        transmission_id = _required(lowered, H_TRANSMISSION_ID)
        transmission_time = _required(lowered, H_TRANSMISSION_TIME)
        signature_b64 = _required(lowered, H_TRANSMISSION_SIG)
        cert_url = _required(lowered, H_CERT_URL)
        algorithm = lowered.get(H_AUTH_ALGO, _ALGORITHM)
        if algorithm != _ALGORITHM:
            raise InvalidWebhookError(f"unsupported algorithm {algorithm!r}", gateway_code="bad_algorithm")
        if self._tolerance_s is not None:
            sent_at = _parse_time(transmission_time)
            if abs(now - sent_at) > self._tolerance_s:
                raise InvalidWebhookError("transmission time outside the tolerance",
                                          gateway_code="timestamp_out_of_tolerance")  # fmt: skip
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidWebhookError("signature is not base64", gateway_code="malformed_signature") from exc
        certificate = self._certificate(check_cert_url(cert_url))
        now_dt = datetime.fromtimestamp(now, tz=UTC)
        if not certificate.not_valid_before_utc <= now_dt <= certificate.not_valid_after_utc:
            raise InvalidWebhookError("certificate not valid now", gateway_code="bad_certificate")
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise InvalidWebhookError("certificate key is not RSA", gateway_code="bad_certificate")
        message = signed_message(transmission_id, transmission_time, self._webhook_id, raw_body)
        try:
            public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise InvalidWebhookError("signature does not verify", gateway_code="signature_mismatch") from exc

    def verify_and_parse(self, raw_body: bytes, headers: Mapping[str, str], *, now: int) -> GatewayNotification:
        self.verify(raw_body, headers, now=now)
        try:
            event = json.loads(raw_body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidWebhookError(f"webhook body is not JSON: {exc}", gateway_code="malformed_event") from exc
        if not isinstance(event, dict):
            raise InvalidWebhookError("webhook body is not a JSON object", gateway_code="malformed_event")
        return notification_from_event(event)

    def _certificate(self, url: str) -> x509.Certificate:
        cached = self._certs.get(url)
        if cached is not None:
            self._certs.move_to_end(url)
            return cached
        try:
            pem = self._fetch_cert(url)
            certificate = x509.load_pem_x509_certificate(pem)
        except InvalidWebhookError:
            raise
        except Exception as exc:  # any fetch or parse failure: do not accept the webhook
            raise InvalidWebhookError(f"cannot load certificate: {type(exc).__name__}",
                                      gateway_code="bad_certificate") from exc  # fmt: skip
        self._certs[url] = certificate
        if len(self._certs) > _CACHE_SIZE:
            self._certs.popitem(last=False)
        return certificate


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise InvalidWebhookError(f"missing header {name}", gateway_code="missing_signature")
    return value


def _parse_time(value: str) -> int:
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise InvalidWebhookError("malformed transmission time", gateway_code="malformed_signature") from exc
