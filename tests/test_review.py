"""The QC review pages: seeded samples, one compact page per task and split behind an index, images
inline, every text escaped."""

import base64
import hashlib
import io
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ying.cli import main
from ying.data.review import sample_records, write_review_page
from ying.data.schema import RECORD_SCHEMA


def _png(key: str, size=(8, 6)) -> bytes:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:3], "big")
    buf = io.BytesIO()
    Image.new("RGB", size, (h % 256, h // 256 % 256, h // 65536 % 256)).save(buf, format="PNG")
    return buf.getvalue()


def _record(task, split, n, images=None, **text):
    rid = f"{task}-{split}-{n}"
    rec = {"id": rid, "task": task, "category": "vqa", "lang": "en", "split": split,
           "images": images or [_png(rid)], "instruction": "Answer the question.", "inputs": f"question {n}?",
           "outputs": f"answer {n}", "meta": json.dumps({"source_id": str(n)})}
    rec.update(text)
    return rec


def _write(data_dir, split, name, records, row_group_size=None):
    d = os.path.join(data_dir, "records", split)
    os.makedirs(d, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=RECORD_SCHEMA), os.path.join(d, name),
                   row_group_size=row_group_size)


@pytest.fixture
def data_dir(tmp_path):
    d = str(tmp_path / "qc")
    # 30 vqa-v2 train records over two files with small row groups, so sampling spans both.
    _write(d, "train", "a.parquet", [_record("vqa-v2", "train", i) for i in range(18)], row_group_size=5)
    _write(d, "train", "b.parquet", [_record("vqa-v2", "train", i) for i in range(18, 30)]
           + [_record("msrvtt-qa", "train", 0, images=[_png(f"frame{k}") for k in range(3)])], row_group_size=4)
    _write(d, "validation", "a.parquet", [
        _record("vqa-v2", "validation", 0, outputs="<script>alert('x')</script> & done",
                meta=json.dumps({"note": "</pre><b>bold</b>"})),
        _record("coco", "validation", 1, images=[_png("big", size=(1000, 800))]),
    ])
    return d


def test_samples_are_per_task_and_split_capped_and_seeded(data_dir):
    a = sample_records(data_dir, per_split=20, seed=0)
    assert set(a) == {("vqa-v2", "train"), ("msrvtt-qa", "train"), ("vqa-v2", "validation"), ("coco", "validation")}
    ids = [r["id"] for r in a[("vqa-v2", "train")]]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert {int(i.rsplit("-", 1)[1]) for i in ids} & set(range(18, 30))  # both files drawn from
    assert all(r["task"] == "vqa-v2" and r["split"] == "train" for r in a[("vqa-v2", "train")])
    assert [r["id"] for r in sample_records(data_dir, per_split=20, seed=0)[("vqa-v2", "train")]] == ids
    assert [r["id"] for r in sample_records(data_dir, per_split=20, seed=1)[("vqa-v2", "train")]] != ids
    assert len(a[("coco", "validation")]) == 1  # fewer records than asked: all of them


def test_index_links_one_page_per_task_and_split_with_one_row_per_record(data_dir, tmp_path):
    out = str(tmp_path / "review.html")
    result = write_review_page(data_dir, out, per_split=20, seed=0)
    names = ["coco--validation", "msrvtt-qa--train", "vqa-v2--train", "vqa-v2--validation"]
    assert result == {"path": out, "sections": 4, "records": 20 + 1 + 1 + 1,
                      "pages": [str(tmp_path / "review" / f"{n}.html") for n in names]}
    index = open(out, encoding="utf-8").read()
    assert all(f'href="review/{n}.html"' in index for n in names)
    pages = {n: open(tmp_path / "review" / f"{n}.html", encoding="utf-8").read() for n in names}
    for page in (index, *pages.values()):
        assert "http://" not in page and "https://" not in page and "<link" not in page  # self-contained
    sample = sample_records(data_dir, per_split=20, seed=0)
    # One table row per record: images, instruction, inputs and output side by side; id and meta folded.
    page = pages["vqa-v2--train"]
    rows = page.split("<tr>")[2:]  # [0] before the table, [1] the header
    assert len(rows) == 20 and 'id="vqa-v2--train"' in page and 'href="../review.html"' in page
    for rec, row in zip(sample[("vqa-v2", "train")], rows):
        assert base64.b64encode(rec["images"][0]).decode() in row
        assert all(rec[k] in row for k in ("instruction", "inputs", "outputs"))
        details = row[row.index("<details>"): row.index("</details>")]
        assert rec["id"] in details and "&quot;source_id&quot;: &quot;" in details  # meta, pretty JSON, escaped
    # A video's frames sit inline in its one row, in order.
    video = sample[("msrvtt-qa", "train")][0]
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', pages["msrvtt-qa--train"])
    assert [base64.b64decode(u) for u in uris] == video["images"]
    # An image bigger than the page shows is a thumbnail, and says so.
    assert "PNG 1000x800, shown as 768x614 thumbnail" in pages["coco--validation"]


def test_every_text_field_is_html_escaped(data_dir, tmp_path):
    out = str(tmp_path / "review.html")
    write_review_page(data_dir, out)
    page = open(tmp_path / "review" / "vqa-v2--validation.html", encoding="utf-8").read()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; done" in page
    assert "<b>bold</b>" not in page and "&lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt;" in page


def test_cli_writes_the_page(data_dir, capsys):
    main(["review", "--data-dir", data_dir, "--per-split", "5", "--seed", "3"])
    assert "wrote 8 records in 4 task/split sections" in capsys.readouterr().out
    assert os.path.exists(os.path.join(data_dir, "review.html"))
    assert len(os.listdir(os.path.join(data_dir, "review"))) == 4
