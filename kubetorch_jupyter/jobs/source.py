"""The notebook a job runs: read and checked, its parameters, its compute metadata.

Parameters follow papermill's conventions: the cell tagged ``parameters`` holds the
defaults, and a run injects a cell tagged ``injected-parameters`` after it. Values on
the command line are parsed as papermill's ``-p`` parses them (``True``/``False``/
``None``, integers, floats, else the text as a string), ``-y`` takes YAML.

The job's compute spec lives in the notebook's metadata, ``metadata.kubetorch.compute``
(a :class:`~kubetorch_jupyter.core.spec.ComputeSpec` as JSON), where the sidebar writes
it; ``--compute NAME|SPEC-JSON`` overrides it, and the exported copy records the one used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat

from ..core.compute import Compute
from ..core.spec import ComputeSpec
from ..exceptions import ComputeNotFoundError, ConfigError

__all__ = ["compute_from_option", "compute_of", "parameter_names", "parse_params",
           "read_notebook"]

#: Where a notebook keeps its compute spec.
METADATA_KEY = "kubetorch"


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """The notebook at ``path``, checked against the nbformat schema.

    Raises:
        ConfigError: When it does not exist or is not a valid notebook.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"notebook {str(path)!r} does not exist" + (
            " (it is a directory)" if file.is_dir() else ""))
    try:
        nb = nbformat.read(file, as_version=4)
        nbformat.validate(nb)
    except (ValueError, nbformat.ValidationError, UnicodeDecodeError) as exc:  # JSON too
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{str(path)!r} is not a valid notebook (nbformat: {first[:200]})"
                          ) from None
    except (AttributeError, KeyError, TypeError):  # JSON that is no notebook at all
        raise ConfigError(f"{str(path)!r} is not a valid notebook (no nbformat structure)"
                          ) from None
    return nb


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def parameter_names(nb: nbformat.NotebookNode) -> list[str] | None:
    """The names the ``parameters`` cell assigns (papermill's reading), None: no such cell."""
    cell = _parameters_cell(nb)
    if cell is None:
        return None
    from papermill.translators import papermill_translators

    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    language = nb.metadata.get("kernelspec", {}).get("language", "python")
    try:
        translator = papermill_translators.find_translator(kernel, language)
        return [p.name for p in translator.inspect(cell)]
    except (ValueError, NotImplementedError, AttributeError):
        return []


def _resolve(value: str) -> Any:
    """The ``-p`` rule of papermill: True/False/None, int, float, else the string."""
    if value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_params(raw: list[str], yaml_params: list[str] | None = None) -> dict[str, Any]:
    """``["lr=0.1", "name=run1"]`` (and YAML mappings) as a dict of values.

    Raises:
        ConfigError: A parameter without ``=``, a name that is not an identifier, YAML
            that does not parse or is no mapping.
    """
    out: dict[str, Any] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE (e.g. --param lr=0.1)")
        if not key.isidentifier():
            raise ConfigError(f"--param {item!r}: {key!r} is not a variable name")
        out[key] = _resolve(value)
    for text in yaml_params or ():
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"--param-yaml {text!r} does not parse as YAML ({where})"
                              ) from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and k.isidentifier()
                                                 for k in data):
            raise ConfigError(f"--param-yaml {text!r}: expected a mapping of variable names "
                              "to values, e.g. 'layers: [64, 32]'")
        out.update(data)
    return out


def check_params(nb: nbformat.NotebookNode, params: dict[str, Any], path: str) -> None:
    """Refuse parameters the notebook cannot take (no ``parameters`` cell, unknown names).

    Raises:
        ConfigError: Naming the parameter and what the notebook defines.
    """
    if not params:
        return
    names = parameter_names(nb)
    if names is None:
        raise ConfigError(
            f"{path!r} has no cell tagged 'parameters', so --param "
            f"{', '.join(params)} has nowhere to go: tag the cell that sets the defaults "
            "'parameters' (Jupyter: View > Cell toolbar > Tags)")
    unknown = [p for p in params if names and p not in names]
    if unknown:
        raise ConfigError(f"--param {', '.join(unknown)}: the parameters cell of {path!r} "
                          f"sets {', '.join(names)}; no {', '.join(map(repr, unknown))}")


def compute_of(nb: nbformat.NotebookNode) -> ComputeSpec | None:
    """The compute spec in the notebook's ``metadata.kubetorch.compute``, if any.

    Raises:
        ConfigError: When it is there but is not a compute spec.
    """
    raw = nb.metadata.get(METADATA_KEY, {}).get("compute")
    if raw is None:
        return None
    try:
        return ComputeSpec.from_json(raw if not isinstance(raw, str) else {"name": raw})
    except (ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(f"the notebook's metadata.kubetorch.compute is not a compute spec "
                          f"({exc}); fix it or pass --compute") from None


def set_compute(nb: nbformat.NotebookNode, spec: ComputeSpec | None) -> None:
    """Record ``spec`` as the notebook's compute (in its metadata)."""
    if spec is None:
        nb.metadata.get(METADATA_KEY, {}).pop("compute", None)
        return
    nb.metadata.setdefault(METADATA_KEY, {})["compute"] = spec.to_json()


def compute_from_option(text: str) -> ComputeSpec:
    """``--compute``: a JSON spec (``{"name": "trainer", "gpus": 1}``) or a compute name.

    A name is the spec of the running compute of that name, else a compute of that
    name with default resources.

    Raises:
        ConfigError: JSON that does not parse or is no spec, or an invalid name.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--compute {text!r} is not valid JSON ({exc.msg} at "
                              f"character {exc.pos})") from None
        try:
            spec = ComputeSpec.from_json(data)
            Compute.from_spec(spec)  # checks the name and the values
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--compute {text!r} is not a compute spec: {exc}") from None
        return spec
    try:
        return Compute.from_name(text).spec
    except ComputeNotFoundError:
        return Compute(name=text).spec
