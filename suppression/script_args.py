"""Named arguments for the Lua scripts: one declaration per script, both sides derived from it.

On the wire a script's ARGV stays positional (no names travel: the hot path sends two scripts
a job), but neither side counts positions. A script's :class:`Arguments` declares its own
arguments by name and kind, the reputation parameters it takes come from their declaration
(:class:`config.reputation.Policy`, ``script=``), and an optional trailing list takes the rest
of ARGV. From that:

- the Python side builds ARGV from names (:meth:`Arguments.argv`: a missing or unknown name
  is an error, never a shifted argument);
- the Lua side gets a prelude (:meth:`Arguments.prelude`, put in place of the script's
  ``-- GENERATED arguments`` line) that reads them into the table ``A`` by name (``A.ttl``;
  ``num`` arguments as numbers, ``flag`` ones as booleans, the trailing list as a Lua list),
  and a function ``policy(cfg_key, ...)`` that gives the table ``P`` of the parameters: each
  the account's override from its cfg hash when it may have one and it is set, else the
  default passed in ARGV (and, from the same HMGET, the further cfg fields named in ``...``).

So a new reputation parameter touches its declaration only: it is passed, named and
overridable in both scripts without an edit to either (tests/integration/test_script_args.py
adds one and runs both).

=======  ===================  ======================================================
kind     Python value         Lua value
=======  ===================  ======================================================
str      str (or int)         the string
num      int or float         ``tonumber`` (a float passed as its ``repr``: exact)
flag     bool                 ``true`` / ``false`` (sent as 1 / 0)
=======  ===================  ======================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from config.reputation import Param, declared

Kind = Literal["str", "num", "flag"]
_KINDS: dict[type, Kind] = {str: "str", int: "num", float: "num"}


class ArgumentError(ValueError):
    """ARGV asked for with a name missing or not declared (a programming error)."""


@dataclass(frozen=True, slots=True)
class Arguments:
    """The ARGV of one script: its own arguments (``names``, with their kinds), then the
    reputation parameters it takes (``params``), then the trailing list ``rest`` ('' for
    none)."""

    script: str
    names: tuple[tuple[str, Kind], ...]
    params: tuple[Param, ...]
    rest: str = ""

    @classmethod
    def declare(cls, script: str, policy_type: type | None = None, *, rest: str = "",
                **names: Kind) -> Arguments:
        """The arguments of ``script``: ``names`` in order, then the parameters of
        ``policy_type`` (a :class:`~config.reputation.Policy`) declared for ``script``."""
        params = () if policy_type is None else tuple(
            p for p in declared(policy_type) if p.script == script)
        clash = set(names) & {p.name for p in params} | ({rest} & set(names))
        if clash:
            raise ArgumentError(f"{script}: {sorted(clash)} declared twice")
        return cls(script, tuple(names.items()), params, rest)

    def argv(self, values: Mapping[str, Any], policy: Any = None,
             rest: Iterable[Any] = ()) -> list[Any]:
        """ARGV in the declared order: ``values`` by name, then ``policy``'s parameters,
        then ``rest``."""
        try:
            if len(values) != len(self.names):
                raise KeyError
            out = [_encode(values[n]) for n, _ in self.names]
        except KeyError:
            missing = [n for n, _ in self.names if n not in values]
            extra = sorted(set(values) - {n for n, _ in self.names})
            raise ArgumentError(f"{self.script}: missing {missing}, not declared {extra}") \
                from None
        if self.params:
            out += _policy_values(self, policy)
        return [*out, *rest]

    def prelude(self) -> str:
        """The Lua that names ARGV (``A``) and reads the policy (``policy``)."""
        fields = [f"{name} = {_read(kind, i)}" for i, (name, kind) in enumerate(self.names, 1)]
        lines = [f"-- ARGV by name (generated from {self.script}'s declaration: "
                 "suppression/script_args.py)",
                 "local A = {" + ", ".join(fields) + "}"]
        if self.rest:
            first = len(self.names) + len(self.params) + 1
            lines.append(f"A.{self.rest} = {{unpack(ARGV, {first})}}")
        return "\n".join([*lines, *self._policy_function()]) + "\n"

    def _policy_function(self) -> list[str]:
        if not self.params:
            return []
        base = len(self.names)
        own = [p for p in self.params if p.per_account]
        lines = ["-- the reputation parameters (P): the account's override (its cfg hash), else",
                 "-- the default in ARGV; and the values of the further cfg fields named (the",
                 "-- same HMGET), in order", "local function policy(cfg_key, ...)"]
        defaults = ", ".join(f"{p.name} = {_read(_kind(p), base + i)}"
                             for i, p in enumerate(self.params, 1))
        names = "".join(f"'{p.name}', " for p in own)
        lines += [f"  local P = {{{defaults}}}",
                  f"  local fields = {{{names}...}}",
                  "  local got = #fields > 0 and redis.call('HMGET', cfg_key, unpack(fields))"
                  " or {}"]
        for i, p in enumerate(own, 1):
            value = f"tonumber(got[{i}])" if _kind(p) == "num" else f"got[{i}]"
            lines.append(f"  P.{p.name} = {value} or P.{p.name}")
        return [*lines, f"  return P, {{select({len(own) + 1}, unpack(got))}}", "end"]

    def describe(self) -> Sequence[str]:
        """Every ARGV name in order (the trailing list's as ``name...``)."""
        return [*(n for n, _ in self.names), *(p.name for p in self.params),
                *([f"{self.rest}..."] if self.rest else [])]


#: (id(arguments), id(policy)) -> (arguments, policy, their values): kept with the objects
#: themselves, so an id reused after one is freed never finds another's values
_POLICY_VALUES: dict[tuple[int, int], tuple[Arguments, Any, tuple[Any, ...]]] = {}
_POLICY_VALUES_KEPT = 256


def _policy_values(arguments: Arguments, policy: Any) -> tuple[Any, ...]:
    """A policy's parameters as ``arguments`` passes them: made once per policy (the hot
    path passes the same one twice a job). Found by identity: hashing the two frozen
    declarations (their every field, each parameter's too) cost ~30 ``__hash__`` calls a
    job, more than making the values. A policy is frozen (:class:`config.reputation.Policy`),
    so the same object always gives the same values."""
    key = (id(arguments), id(policy))
    kept = _POLICY_VALUES.get(key)
    if kept is not None and kept[0] is arguments and kept[1] is policy:
        return kept[2]
    values = tuple(_encode(getattr(policy, p.name)) for p in arguments.params)
    if len(_POLICY_VALUES) >= _POLICY_VALUES_KEPT:
        _POLICY_VALUES.clear()
    _POLICY_VALUES[key] = (arguments, policy, values)
    return values


def _kind(p: Param) -> Kind:
    return _KINDS[p.kind]


def _read(kind: Kind, i: int) -> str:
    if kind == "num":
        return f"tonumber(ARGV[{i}])"
    if kind == "flag":
        return f"ARGV[{i}] == '1'"
    return f"ARGV[{i}]"


def _encode(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value)  # exact: the script's tonumber reads back the same double
    return value
