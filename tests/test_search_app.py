"""The Gradio app, served locally and queried through gradio_client (skipped without gradio)."""

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from modeling_hvit.search import HViTIndex  # noqa: E402
from modeling_hvit.search.app import build_demo  # noqa: E402
from test_modeling import tiny_model  # noqa: E402
from test_search_report import solid_images  # noqa: E402


def test_app_serves_search_and_duplicates(tmp_path):
    paths = solid_images(tmp_path / "imgs")
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    HViTIndex.build(tmp_path / "imgs", tmp_path / "ix", str(model_dir))
    demo = build_demo(tmp_path / "ix")  # the model from the manifest
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        gallery = client.predict(gradio_client.handle_file(str(paths[3])), 4, api_name="/search")
        assert len(gallery) == 4
        assert gallery[0]["caption"].startswith("d = 0.0000")
        tiles, text = client.predict(0.0, api_name="/duplicates")
        assert tiles == [] and "0 groups" in text
    finally:
        demo.close()
