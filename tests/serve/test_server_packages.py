"""A tier serves packages: the model's name on the wire is the package's, several
models share one server (the OIP model list), and a bad spec is one clear line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from collabinfer.errors import ConfigError, ModelError, PackageError
from collabinfer.model.checkpoint import weights_hash
from collabinfer.model.package import write_package, zoo
from collabinfer.model.zoo import create_model
from collabinfer.serve.server import ServerConfig, create_app, load_served
from collabinfer.serve.wire import decode_response, encode_request

from .tier_helpers import NAME, asgi_client, device_request, make_input, make_net, metric


def test_a_package_is_served_under_its_own_name(tmp_path: Path) -> None:
    net = make_net(3)
    path = write_package(tmp_path / "p", net, "my-net", zoo(NAME))
    served = load_served(path)
    assert served.name == "my-net" and weights_hash(served.net) == weights_hash(net)
    assert served.package is not None and load_served(str(path)).name == "my-net"


def test_specs_that_cannot_be_served_say_why(tmp_path: Path) -> None:
    path = write_package(tmp_path / "p", make_net(), "p", zoo(NAME))
    with pytest.raises(ConfigError, match="drop --untrained"):
        load_served(path, untrained=True)
    with pytest.raises(ModelError, match="unknown model"):
        load_served("vgg-99")
    with pytest.raises(ConfigError, match="not packaged yet"):
        load_served(NAME, cache=tmp_path / "empty")
    with pytest.raises(PackageError, match="no manifest"):
        load_served(tmp_path)


def test_one_server_hosts_several_models() -> None:
    a, b = make_net(0), make_net(1)
    torch.manual_seed(2)
    c = create_model("tiny-mlp").eval()
    app = create_app(ServerConfig("cloud", tier_index=1), a, NAME, more=[(c, "mlp")])
    x = make_input()

    async def go() -> None:
        async with asgi_client(app) as client:
            assert (await client.get("/v2/models")).json() == {"models": [NAME, "mlp"]}
            meta = (await client.get("/v2/models/mlp")).json()
            assert meta["name"] == "mlp"
            header, payload = device_request(a, x)
            r = await client.post(
                f"/v2/models/{NAME}/infer", content=encode_request(header, payload)
            )
            assert r.status_code == 200, r.text
            with torch.inference_mode():
                out = torch.tensor(decode_response(r.content).output)
                assert torch.allclose(out, a(x), atol=1e-5)
            r = await client.post("/v2/models/other/infer", content=encode_request(header, payload))
            assert r.status_code == 404 and "hosted: tiny-cnn, mlp" in r.text
            # a request for one model with the other's weights is refused, not answered
            wrong, payload = device_request(b, x)
            wrong = wrong.__class__(**{**wrong.__dict__, "model": "mlp"})
            r = await client.post("/v2/models/mlp/infer", content=encode_request(wrong, payload))
            assert r.status_code in (400, 409, 422), r.text
            text = (await client.get("/metrics")).text
            assert metric(text, "collabinfer_server_requests_total", code="200", model=NAME) == 1
            assert metric(text, "collabinfer_server_requests_total", model="mlp") >= 1
            assert metric(text, "collabinfer_server_requests_total", code="200", model="mlp") == 0

    asyncio.run(go())


def test_a_model_hosted_twice_is_refused() -> None:
    net = make_net()
    with pytest.raises(ConfigError, match="hosted twice"):
        create_app(ServerConfig("edge", tier_index=1), net, NAME, more=[(net, NAME)])
