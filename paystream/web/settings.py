"""Settings of the HTTP edge that ``paystream.config.Settings`` does not hold (yet).

Read from the environment with the same ``PAYSTREAM_`` prefix:

* ``PAYSTREAM_API_KEYS``: ``key_id:sha256hex[:scopes][@customer_id],...`` — the SHA-256 (hex)
  of each API key, never the key itself, with its scope (``read`` < ``write`` < ``admin``;
  none given: ``admin``) and optionally the one customer it is bound to (see
  ``paystream/web/auth.py``).
* Webhook secrets per gateway (comma-separated lists allow rotation):
  ``PAYSTREAM_SIMGW_WEBHOOK_SECRETS``, ``PAYSTREAM_STRIPE_WEBHOOK_SECRETS``,
  ``PAYSTREAM_PAYPAL_CLIENT_ID``/``_CLIENT_SECRET``/``_WEBHOOK_ID``/``_API_BASE``,
  ``PAYSTREAM_ADYEN_API_KEY``/``_MERCHANT_ACCOUNT``/``_HMAC_KEYS``/``_API_BASE``.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYSTREAM_", extra="ignore", hide_input_in_errors=True)

    api_keys: SecretStr = Field(
        default=SecretStr(""),
        description="API keys of the HTTP edge: key_id:sha256hex[:scopes][@customer_id],... — only the SHA-256 "
        "(hex) of each key; scopes read, write or admin ('+'-joined lists allowed; admin includes write includes "
        "read; none given: admin); @customer_id binds a read or write key to one customer's payments and "
        "methods. Empty: every authenticated endpoint answers 401",
    )
    simgw_webhook_secrets: SecretStr | None = None
    stripe_webhook_secrets: SecretStr | None = None
    stripe_return_url: str | None = None
    paypal_client_id: str | None = None
    paypal_client_secret: SecretStr | None = None
    paypal_webhook_id: str | None = None
    paypal_api_base: str | None = None
    adyen_api_key: SecretStr | None = None
    adyen_merchant_account: str | None = None
    adyen_hmac_keys: SecretStr | None = None
    adyen_api_base: str | None = None
    adyen_return_url: str | None = None
    pg_pool_size: int = 4

    def gateway_fields(self) -> dict[str, object]:
        """The gateway settings that are set, by the names ``gateway_clients.registry`` reads."""
        names = (
            "simgw_webhook_secrets", "stripe_webhook_secrets", "stripe_return_url", "paypal_client_id",
            "paypal_client_secret", "paypal_webhook_id", "paypal_api_base", "adyen_api_key",
            "adyen_merchant_account", "adyen_hmac_keys", "adyen_api_base", "adyen_return_url",
        )
        return {name: value for name in names if (value := getattr(self, name)) is not None}
