"""A Flask-style Quart blueprint mounted as an in-process upstream (see gateway.toml beside it)."""

from __future__ import annotations

from quart import Blueprint, jsonify, request

blueprint = Blueprint("hello", __name__)


@blueprint.get("/")
async def index():  # type: ignore[no-untyped-def]
    return jsonify(message="hello from an in-process blueprint",
                   request_id=request.headers.get("x-request-id"))


@blueprint.get("/<name>")
async def greet(name: str):  # type: ignore[no-untyped-def]
    return jsonify(message=f"hello, {name}")
