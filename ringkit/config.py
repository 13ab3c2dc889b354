"""Settings for drivers: turn pydantic's validation errors into ringkit's `ConfigError`.

ringkit validates its own settings with frozen pydantic models, once, where they come in; a
driver with settings of its own does the same and reports a bad value the way ringkit does::

    class DiskSettings(BaseModel):
        model_config = ConfigDict(frozen=True, strict=True, extra="forbid")
        max_queues: int = Field(4, ge=1, le=64)

    try:
        settings = DiskSettings(**options)
    except ValidationError as exc:
        raise config_error(exc, DiskSettings, names={"max_queues": "--max-queues"}) from None

which raises ``ConfigError("bad DiskSettings: --max-queues = 99 is not allowed: must be an
integer in 1..64")`` with ``problems == (InvalidValue("--max-queues", 99, "an integer in
1..64"),)``.
"""

from ._config import config_error as config_error
from ._errors import ConfigError as ConfigError
from ._errors import InvalidValue as InvalidValue

__all__ = ("ConfigError", "InvalidValue", "config_error")
