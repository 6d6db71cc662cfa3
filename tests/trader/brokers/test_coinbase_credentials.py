"""Coinbase credentials and host settings: checked before any request, one-line errors, the key never echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trader.coinbase.http import load_credentials
from trader.errors import ConfigError
from trader.settings import load_settings

KEY_NAME = "organizations/org-1/apiKeys/key-1234"


def ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def test_key_and_secret_load_and_the_repr_hides_the_private_key() -> None:
    pem = ec_pem()
    credentials = load_credentials(load_settings(coinbase_api_key=KEY_NAME, coinbase_api_secret=pem))

    assert credentials is not None and credentials.name == KEY_NAME
    assert credentials.private_key.get_secret_value().strip() == pem.strip()
    assert "PRIVATE KEY" not in repr(credentials) and pem.splitlines()[1] not in repr(credentials)


def test_a_secret_pasted_with_literal_backslash_n_is_accepted() -> None:
    pem = ec_pem()
    credentials = load_credentials(
        load_settings(coinbase_api_key=KEY_NAME, coinbase_api_secret=pem.replace("\n", "\\n"))
    )

    assert credentials is not None and credentials.private_key.get_secret_value().strip() == pem.strip()


def test_the_cdp_key_file_is_read(tmp_path: Path) -> None:
    pem = ec_pem()
    path = tmp_path / "cdp_api_key.json"
    path.write_text(json.dumps({"name": KEY_NAME, "privateKey": pem}))

    credentials = load_credentials(load_settings(coinbase_key_file=path))

    assert credentials is not None and credentials.name == KEY_NAME


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "COINBASE_KEY_FILE: .* does not exist"),
        ("not json", "COINBASE_KEY_FILE: .* is not a CDP key file"),
        (json.dumps({"name": KEY_NAME}), "COINBASE_KEY_FILE: .* is not a CDP key file"),
        (json.dumps({"name": KEY_NAME, "privateKey": "garbage"}), "COINBASE_KEY_FILE: not an EC P-256 private key"),
    ],
)
def test_a_bad_key_file_is_one_line_naming_the_variable(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError, match=expected) as error:
        load_credentials(load_settings(coinbase_key_file=path))

    assert "\n" not in str(error.value)


def test_a_secret_that_is_not_an_ec_key_is_refused_without_echoing_it() -> None:
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    for secret in (rsa_pem, "s3cr3t-not-a-pem"):
        with pytest.raises(ConfigError, match="COINBASE_API_SECRET: not an EC P-256 private key") as error:
            load_credentials(load_settings(coinbase_api_key=KEY_NAME, coinbase_api_secret=secret))
        assert "s3cr3t" not in str(error.value) and rsa_pem.splitlines()[1] not in str(error.value)


def test_key_file_and_key_variables_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set COINBASE_KEY_FILE or COINBASE_API_KEY/COINBASE_API_SECRET, not both"):
        load_settings(coinbase_key_file=tmp_path / "k.json", coinbase_api_key=KEY_NAME, coinbase_api_secret="x")


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("api.coinbase.com", "api.coinbase.com"),
        ("https://127.0.0.1:8443/", "127.0.0.1:8443"),
        (" localhost:9 ", "localhost:9"),
    ],
)
def test_coinbase_api_base_is_a_bare_host(value: str, host: str) -> None:
    assert load_settings(coinbase_api_base=value).coinbase_api_base == host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8080", "COINBASE_API_BASE: plain http is refused"),
        ("api.coinbase.com/api/v3", "COINBASE_API_BASE: must be a host or host:port"),
    ],
)
def test_a_bad_coinbase_api_base_names_the_variable(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(coinbase_api_base=value)
