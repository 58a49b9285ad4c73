"""Calling a Dash callback over HTTP the way the browser does, without a browser."""

from __future__ import annotations

from typing import Any

from dash import Dash


def post_callback(app: Dash, output_ids: list[str], inputs: dict[str, Any]) -> dict[str, Any]:
    """POST one callback to `/_dash-update-component`; returns {component id: {prop: value}}.

    `inputs` gives values by "id.prop" for inputs and states alike; the others are None.
    """
    key = next(k for k in app.callback_map if all(o in k for o in output_ids))
    outputs: Any = [
        {"id": part.rsplit(".", 1)[0], "property": part.rsplit(".", 1)[1].split("@")[0]}
        for part in key.strip(".").split("...")
    ]
    if not key.startswith(".."):  # a single output travels as an object, not a list
        outputs = outputs[0]
    spec = app.callback_map[key]

    def values(deps: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{**d, "value": inputs.get(f"{d['id']}.{d['property']}")} for d in deps]

    body = {"output": key, "outputs": outputs, "inputs": values(spec["inputs"]),
            "state": values(spec["state"]), "changedPropIds": list(inputs)}  # fmt: skip
    response = app.server.test_client().post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.data[:500]
    return response.get_json()["response"]
