"""GGUF model files: header checks that need no torch and no weights (tiny files written here with the gguf
package), the exit-2 errors for what transformers cannot read, and the identity a file adds to step keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from ptst.backends.local import gguf as ptst_gguf


def write(path, arch: str, ftype: int, tensor_type=None):  # type: ignore[no-untyped-def]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_file_type(ftype)
    w.add_chat_template("{{ messages[0]['content'] }}")
    data = np.zeros((4, 32), dtype=np.float32)
    if tensor_type is None:
        w.add_tensor("token_embd.weight", data)
    else:  # raw bytes tagged with a quantization type (content irrelevant: only the header is read)
        w.add_tensor("token_embd.weight", np.zeros((4, 40), dtype=np.uint8), raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PTST_CACHE_DIR", str(tmp_path / "cache"))
    ptst_gguf.gguf_info.cache_clear()


def test_a_readable_file_has_no_problem_and_names_its_quantization(tmp_path):
    f = write(tmp_path / "m.gguf", "llama", 3)  # 3 = MOSTLY_Q4_1
    assert ptst_gguf.gguf_problem(str(f), need_chat_template=True) is None
    info = ptst_gguf.gguf_info(str(f))
    assert (info.architecture, info.quantization, info.tensor_types) == ("llama", "Q4_1", ("F32",))
    ident = ptst_gguf.gguf_identity(str(f))
    assert ident["gguf_quantization"] == "Q4_1" and len(ident["gguf_sha256"]) == 64


def test_an_architecture_transformers_cannot_read_is_named(tmp_path):
    problem = ptst_gguf.gguf_problem(str(write(tmp_path / "m.gguf", "rwkv6", 1)))
    assert problem is not None and "architecture 'rwkv6'" in problem and "\n" not in problem


def test_a_quantization_the_gguf_package_cannot_dequantize_is_named(tmp_path):
    f = write(tmp_path / "m.gguf", "llama", 7, tensor_type=gguf.GGMLQuantizationType.Q8_1)
    problem = ptst_gguf.gguf_problem(str(f))
    assert problem is not None and "Q8_1" in problem and "cannot be dequantized" in problem


def test_not_a_gguf_file_and_a_missing_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
    assert "not a readable GGUF file" in (ptst_gguf.gguf_problem(str(tmp_path / "x.gguf")) or "")
    assert "no such GGUF file" in (ptst_gguf.gguf_problem(str(tmp_path / "nope.gguf")) or "")


def test_the_header_check_imports_no_torch(tmp_path):
    f = write(tmp_path / "m.gguf", "llama", 3)
    code = f"import sys; from ptst.backends.local.gguf import gguf_problem; gguf_problem({str(f)!r}); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_validate_of_an_unreadable_gguf_model_exits_2(tmp_path, capsys):
    from ptst.cli import main

    f = write(tmp_path / "m.gguf", "rwkv6", 1)
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: g\nbackends:\n  - {{kind: hf, model: {f}}}\neval:\n  templates: [chat:vanilla]\n"
                    "  safety: [{path: h.jsonl, prompt_field: prompt}]\njudge: {kind: keyword}\n")
    (tmp_path / "h.jsonl").write_text('{"prompt": "hi"}\n')
    assert main(["validate", str(spec)]) == 2
    assert "rwkv6" in capsys.readouterr().err
