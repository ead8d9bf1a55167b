"""The node's settings: embedded defaults < ``dicomnode.toml`` < ``DICOMNODE_*`` environment.

One typed settings object, validated at start-up.  A bad key or value raises
:class:`~dicomnode.errors.ConfigError` whose message names the key
(``node.port: Input should be less than or equal to 65535``), so an operator
finds the line to fix without reading a traceback.

Environment variables use ``DICOMNODE_<SECTION>__<KEY>``, e.g.
``DICOMNODE_ROUTING__SERIES_QUIET_SECONDS=2``; lists and tables are given as JSON
(``DICOMNODE_NODE__ALLOWED_CALLING='["PACS"]'``).
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dicomnode.errors import ConfigError

ENV_PREFIX = "DICOMNODE_"
DEFAULT_CONFIG_PATHS = (Path("/etc/dicomnode/dicomnode.toml"),)
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no controls


def _check_ae(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters without backslash")
    return value.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NodeSettings(_Section):
    """``[node]``: identity, network and storage locations."""

    aetitle: str = "DICOMNODE"
    port: int = Field(11112, ge=1, le=65535)
    bind: str = "0.0.0.0"
    data_dir: Path = Path("~/.local/share/dicomnode")
    database_url: str = ""
    spool_dir: Path | None = None
    max_associations: int = Field(16, ge=1, le=1024)
    #: Processes accepting associations on the node's port (each uses one core: Python
    #: runs one thread at a time per process).  ``max_associations`` is per process.
    receive_processes: int = Field(1, ge=1, le=64)
    max_pdu_size: int = Field(131072, ge=0)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    allowed_calling: list[str] = Field(default_factory=list)
    duplicate_policy: Literal["keep_newest", "reject"] = "keep_newest"
    uid_root: str = "1.2.826.0.1.3680043.10.1495."
    log_phi: bool = False
    fsync: bool = True
    min_free_bytes: int = Field(64 * 1024 * 1024, ge=0)

    _ae = field_validator("aetitle")(classmethod(lambda cls, v: _check_ae(v)))

    @field_validator("allowed_calling")
    @classmethod
    def _check_allowed(cls, value: list[str]) -> list[str]:
        for entry in value:
            ae, _, _ip = entry.partition("@")
            _check_ae(ae)
        return value

    @field_validator("uid_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        if not re.fullmatch(r"([1-9][0-9]*|0)(\.([1-9][0-9]*|0))*\.", value) or len(value) > 40:
            raise ValueError("must be a UID prefix ending in '.', at most 40 characters")
        return value


class TLSSettings(_Section):
    """``[tls]``: DICOM TLS (PS3.15 B.1) for the receiver; off unless cert and key are set."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = True


class RoutingSettings(_Section):
    """``[routing]``: completion timers and the rules file."""

    series_quiet_seconds: float = Field(10.0, ge=0)
    study_quiet_seconds: float = Field(30.0, ge=0)
    sweep_seconds: float = Field(1.0, gt=0)
    rules_file: Path | None = None


class Destination(_Section):
    """``[[destinations]]``: a DICOM peer results are sent to."""

    name: str
    aetitle: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    storage_commitment: bool = False

    _ae = field_validator("aetitle")(classmethod(lambda cls, v: _check_ae(v)))


class JobsSettings(_Section):
    """``[jobs]``: workers, retries, backoff."""

    workers: int = Field(1, ge=0, le=64)
    max_attempts: int = Field(5, ge=1)
    retry_backoff_seconds: list[float] = Field(default_factory=lambda: [10.0, 60.0, 300.0, 900.0])
    job_timeout_seconds: float = Field(600.0, gt=0)
    # One thread per worker: on a 2-core host the receiver needs the other core, and
    # two torch threads under contention measured 50x slower (mtici: 2.6 s vs 0.05 s a pair).
    torch_threads: int = Field(1, ge=1)
    device: str = "cpu"
    lease_seconds: float = Field(60.0, ge=1)  # a dead worker's job is claimed again after this
    # A worker process is replaced after this many jobs (whatever a module leaks is returned).
    max_jobs_per_process: int = Field(25, ge=1)


class DeliverySettings(_Section):
    """``[delivery]``: the outbox's retry schedule."""

    max_attempts: int = Field(0, ge=0)  # 0 = retry forever (capped backoff)
    retry_backoff_seconds: list[float] = Field(default_factory=lambda: [5.0, 30.0, 120.0, 600.0])


class ResultsSettings(_Section):
    """``[results]``: which SR storage class to write, and which optional objects to add.

    ``summary_sr`` adds, for every job, an Enhanced SR (TID 2000, "AI <module>: summary")
    that states each finding as text: viewers such as OHIF show it as a readable report,
    while the TID 1500 SR carries the coded measurements.
    """

    sr_storage: Literal["comprehensive", "comprehensive3d"] = "comprehensive"
    gsps: bool = False
    summary_sr: bool = False


class RetentionSettings(_Section):
    """``[retention]``: delete delivered studies after this many days (0 = keep forever)."""

    days: float = Field(0.0, ge=0)


class MetricsSettings(_Section):
    """``[metrics]``: the Prometheus endpoint (``/metrics``); off unless ``port`` is set."""

    port: int = Field(0, ge=0, le=65535)  # 0 = no endpoint
    bind: str = "127.0.0.1"


class Settings(BaseSettings):
    """All settings; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    destinations: list[Destination] = Field(default_factory=list)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the file, the file (passed as init kwargs) over defaults.
        return (env_settings, init_settings)

    # -- derived paths -------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.node.data_dir.expanduser()

    @property
    def spool_dir(self) -> Path:
        return (self.node.spool_dir or self.data_dir / "spool").expanduser()

    @property
    def database_url(self) -> str:
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{self.data_dir / 'index.sqlite'}"

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise ConfigError(f"destinations: no destination named {name!r}")


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return f"invalid configuration ({source}): " + "; ".join(lines)


def find_config_file(explicit: Path | None) -> Path | None:
    """The config file to read: ``--config``, ``$DICOMNODE_CONFIG``, or ``/etc/dicomnode``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("DICOMNODE_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    config_file: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> Settings:
    """Read, merge and validate the settings.

    Parameters
    ----------
    config_file : Path, optional
        A TOML file; when None, ``$DICOMNODE_CONFIG`` or ``/etc/dicomnode/dicomnode.toml``
        if present, else embedded defaults only.
    overrides : dict, optional
        Section → key → value from command-line flags; these win over everything.

    Raises
    ------
    ConfigError
        With a message naming the bad key.
    """
    path = find_config_file(config_file)
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid configuration ({path}): {exc}") from None
    try:
        settings = Settings(**data)
        for section, values in (overrides or {}).items():
            target = getattr(settings, section)
            for key, value in values.items():
                if value is not None:
                    setattr(target, key, value)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
    return settings
