"""Secrets and paths of the service, from the environment only (env prefix ATELIER_)."""

from __future__ import annotations

import ipaddress

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    keys_uri: str | None = Field(
        None,
        description="LanceDB location of the API key table (a folder or object-store URI); None means the "
        "gallery's database, ATELIER_LANCEDB_URI. Every proxy and replica reads it from the environment, "
        "so it is the same on every node.",
    )
    keys_table: str = Field("api_keys", description="Name of the API key table (sha256 digests, never keys).")
    plans_table: str = Field("user_plans", description="Name of the table of users' plans, beside the key table.")
    url_secret: SecretStr | None = Field(None, description="Secret that signs image URLs.")
    url_secret_file: str = Field(
        "data/url_secret", description="File holding the URL-signing secret when ATELIER_URL_SECRET is not set."
    )
    public_url: AnyHttpUrl | None = Field(
        None,
        description="The URL clients reach the service at, e.g. https://photos.example.com: the base of every "
        "absolute URL the service returns (image URLs). None means the local address the connection arrived "
        "at (scheme, IP and port of Serve's HTTP proxy). Never the request's Host header.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks (e.g. 10.0.0.5,10.1.0.0/16) of the reverse proxies "
        "whose X-Forwarded-For and X-Forwarded-Proto Serve's HTTP proxy believes; from anyone else they are "
        "ignored. Empty (the default): nobody's.",
    )

    max_head_bytes: int = Field(
        64 * 1024, ge=4096, description="Most bytes of a request line and headers Serve's HTTP proxy reads: past "
        "them it answers 414 (the request line) or 431 (headers) and closes the connection, before any key check.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a connection has to finish a request's line and headers from its first "
        "byte (a new connection: from its opening); past them the proxy answers 408 and closes it.")

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            ipaddress.ip_network(item, strict=False)  # a ValueError names the entry that is not an address
        return ",".join(items)

    def public_base(self) -> str | None:
        """`public_url` without its trailing slash, or None."""
        return str(self.public_url).rstrip("/") if self.public_url is not None else None
