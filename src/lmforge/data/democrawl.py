"""A deterministic, labelled demo crawl written as real WARC/1.0 files.

Pages are built from Python's own documentation (see `sources`), then the phenomena that
curation must handle are injected on purpose and recorded in `labels.jsonl`, one row per
WARC record, so every later stage can be scored for precision and recall.
"""

from __future__ import annotations

import html
import io
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from lmforge.data import sources
from lmforge.eval import generated as tasks
from lmforge.io.storage import atomic_path, write_jsonl_gz
from lmforge.runner import CFG, OUT_DIR, SEED, arg, command
from lmforge.settings import Section


@dataclass(frozen=True)
class DemoCrawlConfig(Section):
    SECTION = "crawl.demo"

    shards: int
    date: str  # the crawl's first capture time, ISO 8601 in UTC
    paragraphs_per_page: list[int]  # min and max
    inject: dict[str, int | float]  # how many pages of each labelled defect

DOMAINS = [
    "pynotes.example.com", "docs-mirror.example.org", "learnpython.example.net",
    "codeblog.example.com", "refguide.example.org", "devwiki.example.net",
    "snippets.example.com", "tutorials.example.org",
]
NAV = ["Home", "Articles", "Tutorials", "About", "Contact", "Archive"]
BOILERPLATE = [
    "Subscribe to our weekly newsletter to receive new Python articles, tips and tutorials "
    "directly in your inbox. You can unsubscribe at any time with one click.",
    "This site uses cookies to remember your preferences and to measure how the articles are "
    "read. By continuing to browse the site you agree to our use of cookies.",
]
# Word lists for non-English pages: combinations give varied, real-language sentences.
FOREIGN = {
    "de": (
        ["Der alte Mann", "Die junge Frau", "Das kleine Kind", "Mein Bruder", "Unsere Lehrerin",
         "Der Nachbar", "Die Familie", "Das Team"],
        ["kauft", "findet", "liest", "sieht", "braucht", "sucht", "bringt", "zeigt"],
        ["ein neues Buch", "den roten Apfel", "eine warme Suppe", "das schöne Haus",
         "einen langen Brief", "die alte Zeitung", "das kleine Fahrrad", "einen guten Freund"],
        ["heute Morgen", "jeden Tag", "im Garten", "in der Stadt", "nach der Arbeit",
         "am Wochenende", "mit großer Freude", "ohne Pause"],
    ),
    "fr": (
        ["Le vieil homme", "La jeune femme", "Le petit enfant", "Mon frère", "Notre professeur",
         "Le voisin", "La famille", "Cette équipe"],
        ["achète", "trouve", "lit", "regarde", "cherche", "apporte", "montre", "prépare"],
        ["un nouveau livre", "la pomme rouge", "une soupe chaude", "la belle maison",
         "une longue lettre", "le vieux journal", "le petit vélo", "un bon repas"],
        ["ce matin", "chaque jour", "dans le jardin", "en ville", "après le travail",
         "pendant le week-end", "avec beaucoup de joie", "sans se presser"],
    ),
    "es": (
        ["El hombre mayor", "La mujer joven", "El niño pequeño", "Mi hermano",
         "Nuestra profesora", "El vecino", "La familia", "Este equipo"],
        ["compra", "encuentra", "lee", "mira", "busca", "trae", "muestra", "prepara"],
        ["un libro nuevo", "la manzana roja", "una sopa caliente", "la casa bonita",
         "una carta larga", "el periódico viejo", "la bicicleta pequeña", "una buena comida"],
        ["esta mañana", "todos los días", "en el jardín", "en la ciudad", "después del trabajo",
         "durante el fin de semana", "con mucha alegría", "sin prisa"],
    ),
}
SPAM_WORDS = ["cheap", "best", "price", "discount", "watches", "casino", "free", "bonus",
              "win", "now", "online", "deal", "offer", "click", "replica", "pills"]
# Abusive comment-thread sentences for the toxicity tagger to find (all score > 0.85 with it).
TOXIC_SUBJECTS = ["The author", "Whoever wrote this", "The moderator", "This guy", "Your boss",
                  "The last commenter"]
TOXIC_PREDICATES = ["is a stupid idiot", "is a worthless moron", "should shut the hell up",
                    "is a pathetic loser", "is a damn fool and a liar", "is a dumb jerk",
                    "is full of crap"]
MIN_PAGE_WORDS = 80


@dataclass
class Page:
    url: str
    title: str
    paragraphs: list[str]
    lang: str = "en"
    kinds: list[str] = field(default_factory=list)
    group: str | None = None  # duplicate group key (exact / near / url)
    pii: dict[str, int] = field(default_factory=dict)
    toxic_sentences: int = 0
    task_items: list[str] = field(default_factory=list)
    boilerplate: bool = False
    content_type: str = "text/html; charset=utf-8"
    body: bytes | None = None

    def render(self) -> bytes:
        if self.body is not None:
            return self.body
        nav = " | ".join(f'<a href="/{n.lower()}">{n}</a>' for n in NAV)
        paras = "\n".join(f"<p>{html.escape(p)}</p>" for p in self.paragraphs)
        title = html.escape(self.title)
        return (
            f'<!DOCTYPE html>\n<html lang="{self.lang}"><head><meta charset="utf-8">'
            f"<title>{title}</title></head>\n<body><nav>{nav}</nav>\n<main><article>"
            f"<h1>{title}</h1>\n{paras}\n</article></main>\n"
            f"<footer>Copyright 2024 {html.escape(self.url.split('/')[2])}. "
            f"All rights reserved.</footer></body></html>\n"
        ).encode("utf-8")


def _clean_pool(rng: random.Random) -> list[tuple[str, str]]:
    """The crawl paragraphs, shuffled so that pages do not string together the formulaic
    sibling docstrings of one module ("Return True if ..."), which would make honest pages
    look repetitive."""
    pool = list(sources.crawl_paragraphs())
    rng.shuffle(pool)
    return pool


def _clean_pages(rng: random.Random, per_page: tuple[int, int]) -> list[Page]:
    pool = _clean_pool(rng)
    pages, cursor, index = [], 0, 0
    while cursor < len(pool):
        want = rng.randint(*per_page)
        paras: list[str] = []
        while cursor < len(pool) and (
            len(paras) < want or sum(len(p.split()) for p in paras) < MIN_PAGE_WORDS
        ):
            paras.append(pool[cursor][1])
            cursor += 1
        if sum(len(p.split()) for p in paras) < MIN_PAGE_WORDS:
            break  # leftover tail too short to be a clean page
        domain = DOMAINS[index % len(DOMAINS)]
        origin = pool[cursor - 1][0]
        title = f"Python notes {index}: {origin}"
        pages.append(Page(url=f"https://{domain}/articles/{index:05d}.html", title=title,
                          paragraphs=paras))
        index += 1
    return pages


def _foreign_page(rng: random.Random, lang: str, index: int) -> Page:
    subjects, verbs, objects, adverbials = FOREIGN[lang]
    paras = []
    for _ in range(rng.randint(3, 5)):
        sents = [
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
            f"{rng.choice(adverbials)}."
            for _ in range(rng.randint(4, 7))
        ]
        paras.append(" ".join(sents))
    domain = f"{lang}.example.{lang}"
    return Page(url=f"https://{domain}/seite/{index:04d}.html", title=paras[0][:40],
                paragraphs=paras, lang=lang, kinds=["non_english"])


def _spam_page(rng: random.Random, index: int) -> Page:
    style = index % 3
    if style == 0:  # keyword stuffing: the same few n-grams over and over
        words = rng.sample(SPAM_WORDS, 4)
        paras = [" ".join(words * 12) for _ in range(4)]
    elif style == 1:  # link list of symbols and bullets
        paras = [f"• ★★★ {rng.choice(SPAM_WORDS).upper()} ★★★ >>> #{i} ### !!! ..."
                 for i in range(20)]
    else:  # too short to be a document
        paras = [f"{rng.choice(SPAM_WORDS)} {rng.choice(SPAM_WORDS)} click here"]
    return Page(url=f"https://deals{index % 4}.example.biz/offer/{index:04d}",
                title="Best deals online", paragraphs=paras, kinds=["spam"])


def _insert_pii(rng: random.Random, page: Page, index: int) -> None:
    email = f"maintainer{index}@mail{index % 3}.example.org"
    phone = f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    ip = f"192.0.2.{rng.randint(1, 254)}"
    sentences = [f"Questions about this article can be sent to {email}.",
                 f"Our help line is open on weekdays at {phone}.",
                 f"The examples were tested on the build server at {ip} last week."]
    chosen = sentences[: 1 + index % 3]
    page.paragraphs.insert(1, " ".join(chosen))
    page.pii = {kind: sum(1 for s in chosen if kind_marker in s)
                for kind, kind_marker in (("email", email), ("phone", phone), ("ip", ip))}
    page.kinds.append("pii")


def _toxic_sentences(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.choice(TOXIC_SUBJECTS)} {rng.choice(TOXIC_PREDICATES)}." for _ in range(n)]


def _insert_toxic(rng: random.Random, page: Page, index: int) -> None:
    """Even pages become comment threads that are mostly abuse (drop the page); odd ones get
    one abusive comment line between paragraphs (remove the span, keep the page)."""
    if index % 2 == 0:
        thread = [" ".join(_toxic_sentences(rng, 4)) for _ in range(4)]
        page.paragraphs = page.paragraphs[:1] + thread
        page.toxic_sentences = 16
        page.kinds.append("toxic")
    else:
        page.paragraphs.insert(len(page.paragraphs) // 2, _toxic_sentences(rng, 1)[0])
        page.toxic_sentences = 1
        page.kinds.append("toxic_span")


def _perturb(rng: random.Random, paragraphs: list[str], rate: float = 0.02) -> list[str]:
    """A near-duplicate: about 2% of the words replaced, as a lightly edited re-post
    (5-gram Jaccard similarity to the original about 0.8)."""
    words = [para.split() for para in paragraphs]
    positions = [(p, w) for p, para in enumerate(words) for w in range(len(para))]
    for p, w in rng.sample(positions, max(1, int(len(positions) * rate))):
        words[p][w] = rng.choice(["really", "also", "often", "now"])
    return [" ".join(para) for para in words]


def build_pages(cfg: DemoCrawlConfig, task_items: dict[str, list[dict]], seed: int
                ) -> list[Page]:
    rng = random.Random(seed)
    inject = cfg.inject
    clean = _clean_pages(rng, tuple(cfg.paragraphs_per_page))
    needed = sum(inject[k] for k in ("exact_duplicates", "near_duplicates", "url_duplicates",
                                      "pii", "toxic", "contamination"))
    if needed > len(clean) // 2:
        raise ValueError(f"the demo text makes {len(clean)} pages; the injections need {needed}")
    order = list(range(len(clean)))
    rng.shuffle(order)
    picks = iter(order)

    def take(n: int) -> list[Page]:
        return [clean[next(picks)] for _ in range(n)]

    extra: list[Page] = []
    consumed: set[int] = set()  # pages whose text was reused elsewhere, dropped from the crawl
    for n, page in enumerate(take(inject["exact_duplicates"])):
        page.group = f"exact-{n}"
        copy = Page(url=f"https://mirror{n % 3}.example.net/copy/{n:04d}.html",
                    title=page.title, paragraphs=list(page.paragraphs), group=page.group,
                    kinds=["exact_duplicate"])
        extra.append(copy)
    for n, page in enumerate(take(inject["near_duplicates"])):
        page.group = f"near-{n}"
        extra.append(Page(url=f"https://reposts.example.com/post/{n:04d}.html", title=page.title,
                          paragraphs=_perturb(rng, page.paragraphs), group=page.group,
                          kinds=["near_duplicate"]))
    for n, page in enumerate(take(inject["url_duplicates"])):
        # The same URL fetched again later, with content rewritten in between.
        page.group = f"url-{n}"
        (fresh,) = take(1)
        consumed.add(id(fresh))
        extra.append(Page(url=page.url, title=fresh.title, paragraphs=list(fresh.paragraphs),
                          group=page.group, kinds=["url_duplicate"]))
    for n, page in enumerate(take(inject["pii"])):
        _insert_pii(rng, page, n)
    for n, page in enumerate(take(inject["toxic"])):
        _insert_toxic(rng, page, n)
    task_texts = [(name, item) for name in tasks.TASK_NAMES for item in task_items[name]]
    rng.shuffle(task_texts)
    for n, page in enumerate(take(inject["contamination"])):
        name, item = task_texts[n % len(task_texts)]
        page.paragraphs.insert(len(page.paragraphs) // 2, tasks.item_text(name, item))
        page.task_items.append(item["id"])
        page.kinds.append("contamination")
    boiler = [p for p in clean if not p.kinds and p.group is None and id(p) not in consumed]
    for page in rng.sample(boiler, min(inject["boilerplate"], len(boiler))):
        page.paragraphs = page.paragraphs + BOILERPLATE
        page.boilerplate = True
    langs = sorted(FOREIGN)
    extra += [_foreign_page(rng, langs[n % 3], n) for n in range(inject["non_english"])]
    extra += [_spam_page(rng, n) for n in range(inject["spam"])]
    for n in range(inject["non_html"]):
        extra.append(Page(url=f"https://static.example.com/img/{n:03d}.png", title="",
                          paragraphs=[], kinds=["non_html"], content_type="image/png",
                          body=b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(64))))
    pages = [p for p in clean if id(p) not in consumed] + extra
    rng.shuffle(pages)
    return pages


def _record_id(seed: int, index: int) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'lmforge-demo/{seed}/{index}')}>"


def write_demo_crawl(out_dir: str | Path, cfg: DemoCrawlConfig | Mapping, task_dir: str | Path,
                     seed: int) -> dict:
    """Write `shard-XXXX.warc.gz` files and `labels.jsonl.gz`; returns counts by kind."""
    cfg = DemoCrawlConfig.of(cfg)
    out_dir = Path(out_dir)
    items = {name: tasks.load_task(Path(task_dir) / f"{name}.jsonl.gz")
             for name in tasks.TASK_NAMES}
    pages = build_pages(cfg, items, seed)
    start = datetime.strptime(cfg.date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    n_shards = cfg.shards
    shards: list[list[int]] = [list(range(s, len(pages), n_shards)) for s in range(n_shards)]
    # Within each duplicate group the copy met first (shard order, then position) is the
    # original; the later ones are the duplicates a first-occurrence dedup must remove.
    first_of_group: dict[str, str] = {}
    labels = []
    for shard, indices in enumerate(shards):
        for position, index in enumerate(indices):
            page = pages[index]
            label = {
                "shard": f"shard-{shard:04d}", "position": position, "url": page.url,
                "record_id": _record_id(seed, index), "kinds": sorted(set(page.kinds)),
                "lang": page.lang, "pii": page.pii, "toxic_sentences": page.toxic_sentences,
                "task_items": page.task_items,
                "boilerplate": page.boilerplate, "duplicate_of": None,
            }
            if page.group is not None:
                kinds = [k for k in label["kinds"] if not k.endswith("_duplicate")]
                if page.group in first_of_group:
                    label["duplicate_of"] = first_of_group[page.group]
                    kinds.append(f"{page.group.split('-')[0]}_duplicate")
                else:
                    first_of_group[page.group] = label["record_id"]
                label["kinds"] = sorted(kinds)
            labels.append(label)
    for shard, indices in enumerate(shards):
        path = out_dir / f"shard-{shard:04d}.warc.gz"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            writer = WARCWriter(handle, gzip=True)
            for index in indices:
                _write_record(writer, pages[index], _record_id(seed, index),
                              start + timedelta(seconds=index))
    write_jsonl_gz(out_dir / "labels.jsonl.gz", labels)
    counts: dict[str, int] = {"records": len(pages)}
    for label in labels:
        for kind in label["kinds"] or ["clean"]:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _write_record(writer: WARCWriter, page: Page, record_id: str, date: datetime) -> None:
    body = page.render()
    http_headers = StatusAndHeaders(
        "200 OK",
        [("Content-Type", page.content_type), ("Content-Length", str(len(body)))],
        protocol="HTTP/1.1",
    )
    record = writer.create_warc_record(
        page.url, "response", payload=io.BytesIO(body), http_headers=http_headers,
        warc_headers_dict={"WARC-Record-ID": record_id,
                           "WARC-Date": date.strftime("%Y-%m-%dT%H:%M:%SZ")},
    )
    writer.write_record(record)


@command("crawl-demo", CFG, SEED, OUT_DIR, arg("--tasks-dir"), job="crawl_demo",
         params=lambda args: {**args.cfg, "seed": args.seed}, inputs=("tasks_dir",),
         outputs=("out_dir",))
def crawl_demo_command(args, job) -> dict:
    """The demo crawl: WARC shards with labelled documents."""
    counts = write_demo_crawl(args.out_dir, args.cfg, args.tasks_dir, args.seed)
    logging.getLogger(__name__).info("demo crawl: %s", counts)
    job.log_artifact(Path(args.out_dir) / "labels.jsonl.gz")
    return {f"records.{k}": v for k, v in counts.items()}
