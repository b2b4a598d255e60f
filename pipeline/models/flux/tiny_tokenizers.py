"""Real CLIP and T5 tokenizers trained locally on a small built-in corpus (nothing from the Hub).

Tiny text models need tokenizers whose vocabularies fit their small embedding tables, and tests
may not download the real ones. These are genuine tokenizers of the kinds FLUX uses, wrapped in
the transformers classes the real checkpoints name:
- CLIP (`CLIPTokenizer`): byte-level BPE with CLIP's own lower-casing normalizer and
  pre-tokenizer, word-end suffix "</w>", special tokens <|startoftext|> / <|endoftext|>. The
  vocabulary is laid out like CLIP-L's: the 256 byte symbols, the same with "</w>", the merged
  symbols in merge order, then the two specials (end-of-text has the highest id). So no text is
  ever unknown. The merges are learnt by `learn_bpe_merges`, a plain BPE learner with a fixed
  tie-break: the `tokenizers` trainer breaks ties between equally frequent pairs in hash order,
  which changes the vocabulary from one process to the next.
- T5 (`T5Tokenizer`): a real SentencePiece Unigram model (spiece.model, nmt_nfkc normalization,
  <pad>=0, </s>=1, <unk>=2, no <s>) trained by the `sentencepiece` library single-threaded, plus
  T5's 100 <extra_id_*> sentinels, converted by transformers exactly as T5 v1.1's spiece.model is.
Both are deterministic: every build writes byte-identical tokenizer files.
"""

from __future__ import annotations

import io
import itertools
import string
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5Tokenizer

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MAX_MERGES = 800
T5_VOCAB = 400  # an upper bound: SentencePiece stops earlier on a corpus this small
T5_EXTRA_IDS = 100
T5_MODEL_FILE = "spiece.model"

_STYLES = (
    "3D Chibi, American Cartoon, Chinese Ink, Clay Toy, Fabric, Ghibli, Irasutoya, Jojo, "
    "LEGO, Line, Macaron, Oil Painting, Origami, Paper Cutting, Picasso, Pixel, Poly, "
    "Pop Art, Rick Morty, Snoopy, Van Gogh, Vector"
)

CORPUS = (
    "A photo of a cat sitting on a red chair next to a window, soft morning light.",
    "A portrait of a woman with curly hair wearing a yellow raincoat in the city at night.",
    "An old man reading a newspaper on a wooden bench in the park under autumn trees.",
    "A bowl of fresh fruit on a kitchen table: apples, oranges, grapes and two bananas.",
    "Product shot of a white sneaker on a clean grey background, studio lighting, 4k, sharp.",
    "A mountain lake at sunrise with mist over the water and pine trees on the shore.",
    "Two children flying a kite on a windy beach, waves and seagulls in the background.",
    "A vintage car parked in front of a small cafe on a cobblestone street in Paris.",
    "A golden retriever puppy playing with a blue ball on green grass, shallow depth of field.",
    "A bustling market street in Tokyo with neon signs, umbrellas and people walking in the rain.",
    "A cozy living room with a sofa, a lamp, bookshelves and a sleeping dog near the fireplace.",
    "The subject is holding a cup of coffee and smiling at the camera.",
    "Transform the image into Ghibli style. Keep the layout, the pose and the colors.",
    "Transform the image into oil painting style with thick brush strokes and warm tones.",
    "Watercolor illustration of a lighthouse on a cliff, pastel colors, paper texture.",
    "Pixel art of a knight with a sword and shield, 16-bit video game, limited palette.",
    "A clay toy figure of an astronaut standing on the moon, stop motion, handmade.",
    "Line drawing of a bicycle leaning against a brick wall, black ink on white paper.",
    "Chinese ink painting of bamboo and a small bridge over a river, misty hills.",
    "Pop art poster of a woman with sunglasses, bold outlines, halftone dots, bright colors!",
    "Origami crane made of folded paper on a desk; minimal, elegant, soft shadows.",
    "Van Gogh style starry night over a village with swirling clouds and a tall cypress tree.",
    "Vector illustration, flat design, geometric shapes, 2 people, 3 trees, 1 house.",
    "A LEGO city with a train station, buses, cars and tiny figures waiting on the platform.",
    "Macaron style dessert shop with pink, mint and lavender walls, cute and sweet.",
    "Paper cutting art of a fox in a forest, layered paper, depth, shadows, craft.",
    "Low poly render of a deer in a meadow, faceted shapes, pastel gradient sky.",
    "Picasso style cubist portrait with fragmented faces and bold geometric planes.",
    "Jojo style dramatic pose, strong shading, manga lines and intense expression.",
    "Fabric style embroidered patch of a rose, stitched threads, textile texture.",
    "Irasutoya style simple cute illustration of a teacher pointing at a blackboard.",
    "Snoopy style comic strip, a beagle sleeping on top of a red doghouse.",
    "Rick Morty style cartoon scientist with spiky hair in a green portal.",
    "American cartoon style family watching television on a couch, bright flat colors.",
    f"Styles: {_STYLES}.",
    "Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 10 100 1024 512 - + = / ( ) [ ] # % & @ ' \" ?",
    "It's a sunny day; they're happy, we've arrived, I'm here, you'll see, he'd go.",
    " ".join(string.ascii_letters + string.digits + string.punctuation),  # every ASCII symbol
)


def _corpus() -> list[str]:
    return list(CORPUS) * 4  # repetition gives the trainers stable frequencies


def learn_bpe_merges(
    words: Counter[str], max_merges: int, min_count: int = 2
) -> list[tuple[str, str]]:
    """Merges of a BPE over `words` (byte-level symbols, last one + "</w>"), most frequent pair
    first, ties broken by the pair's text so the result never depends on hash order."""
    splits = {word: [*word[:-1], word[-1] + "</w>"] for word in words if word}
    merges: list[tuple[str, str]] = []
    for _ in range(max_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in splits.items():
            for pair in itertools.pairwise(symbols):  # neighbouring symbols
                pairs[pair] += words[word]
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        if count < min_count:
            break
        merges.append(best)
        for word, symbols in splits.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    backend = CLIPTokenizer().backend_tokenizer  # CLIP's exact normalizer and pre-tokenizer
    words: Counter[str] = Counter()
    for line in _corpus():
        normalized = backend.normalizer.normalize_str(line)
        words.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
    merges = learn_bpe_merges(words, CLIP_MAX_MERGES)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = alphabet + [symbol + "</w>" for symbol in alphabet]
    seen = set(vocab)
    for left, right in merges:
        if left + right not in seen:
            vocab.append(left + right)
            seen.add(left + right)
    return tuple([*vocab, CLIP_BOS, CLIP_EOS]), tuple(merges)


@lru_cache(maxsize=1)
def t5_sentencepiece_model() -> bytes:
    """The serialized spiece.model of the tiny T5 tokenizer (deterministic bytes)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=T5_VOCAB,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def build_clip_tokenizer() -> CLIPTokenizer:
    """A fresh CLIPTokenizer (model_max_length 77) over the locally learnt BPE."""
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, merges=list(merges), model_max_length=77
    )


def build_t5_tokenizer() -> T5Tokenizer:
    """A fresh T5Tokenizer (model_max_length 512) converted from the trained spiece.model."""
    with tempfile.TemporaryDirectory() as folder:
        write_t5_sentencepiece(Path(folder))
        return T5Tokenizer.from_pretrained(
            folder, extra_ids=T5_EXTRA_IDS, model_max_length=512, local_files_only=True
        )


def write_t5_sentencepiece(folder: Path) -> Path:
    """Write spiece.model into `folder` (a real T5 tokenizer folder carries it too)."""
    path = Path(folder) / T5_MODEL_FILE
    path.write_bytes(t5_sentencepiece_model())
    return path
