"""`datasets_sheet:` a tab-separated sample sheet, one dataset a row, merged into `datasets:`.

Columns: `dataset`, `source`, then any dataset option (`path`, `spatial`, `group_key`, `bin_size`, ...);
options nested in a dataset entry take dotted names (`synthetic.n_spots`, `preprocess.min_counts`). An
empty cell leaves the option unset. Cells are read as YAML scalars (true, 12, 0.5) except for options the
schema types as strings, which stay text. Columns are checked against `datasets_sheet.schema.yaml`,
each row against `dataset.schema.yaml`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tissuelens.config import SCHEMA_DIR, _describe, _validator, load_schemas
from tissuelens.errors import InputError


def _column_schema(column: str, schemas: dict) -> dict | None:
    """The schema of a (dotted) column inside a dataset entry, or None when there is no such option."""
    schema = schemas["dataset.schema.yaml"]
    for part in column.split("."):
        if "$ref" in schema:
            schema = schemas[schema["$ref"]]
        props = schema.get("properties")
        if not isinstance(props, dict) or part not in props:
            return None
        schema = props[part]
    return schemas[schema["$ref"]] if "$ref" in schema else schema


def _cell(value: str, schema: dict, where: str):
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "string" in types and not set(types) - {"string", "null"}:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise InputError(f"{where}: cannot read '{value}' as a value") from None


def read_sheet(path: str | Path, schema_dir: Path = SCHEMA_DIR) -> dict[str, dict]:
    """{dataset: entry} from the sheet; InputError naming the sheet (and row, column) for any problem."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: datasets_sheet not found")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse the datasets sheet ({' '.join(str(exc).split())})") from None
    schemas = load_schemas(schema_dir)
    sheet_schema = schemas["datasets_sheet.schema.yaml"]
    for column in table.columns:
        if column in sheet_schema["properties"]:
            continue
        if _column_schema(column, schemas) is None:
            raise InputError(f"{path}: unknown column '{column}' (not a dataset option)")
    for column in sheet_schema["required"]:
        if column not in table.columns:
            raise InputError(f"{path}: no '{column}' column")
    from jsonschema import Draft202012Validator

    row_validator = Draft202012Validator({**sheet_schema, "additionalProperties": True})
    entry_validator = _validator({**schemas, "config.schema.yaml": schemas["dataset.schema.yaml"]})
    datasets: dict[str, dict] = {}
    rows: dict[str, int] = {}
    for i, row in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        where = f"{path}: line {i}"
        for error in row_validator.iter_errors(row):
            raise InputError(f"{where}: {_describe(error)}")
        name = row.pop("dataset")
        if name in rows:
            raise InputError(f"{path}: dataset '{name}' appears twice (lines {rows[name]} and {i})")
        rows[name] = i
        entry: dict = {}
        for column, value in row.items():
            if value.strip() == "":
                continue
            *parents, key = column.split(".")
            node = entry
            for part in parents:
                node = node.setdefault(part, {})
            node[key] = _cell(value.strip(), _column_schema(column, schemas), f"{where}, column '{column}'")
        errors = [_describe(e) for e in entry_validator.iter_errors(entry) if e.validator not in ("if", "then", "allOf")]
        if errors:
            raise InputError(f"{where} (dataset '{name}'): " + "; ".join(dict.fromkeys(errors)))
        datasets[name] = entry
    if not datasets:
        raise InputError(f"{path}: the datasets sheet has no rows")
    return datasets


def merge_sheet(config: dict) -> dict:
    """`config` with the sheet's rows added under `datasets:`; a name in both is an error naming both."""
    sheet = config.get("datasets_sheet")
    if not sheet:
        return config
    from_sheet = read_sheet(sheet)
    declared = config.get("datasets") or {}
    clash = sorted(set(from_sheet) & set(declared))
    if clash:
        raise InputError(f"{sheet}: dataset '{clash[0]}' is also declared under datasets: in the config; "
                         "rename one of them")
    config["datasets"] = {**declared, **from_sheet}
    return config
