"""Plain English sentences for reading a pretrained model's attention on real text, offline.

`ENGLISH_SENTENCES` are 80 short, varied sentences written for this toolkit (not taken
from any corpus): everyday scenes, science, history, instructions, questions, dialogue
and lists, from four to about thirty words, so that attention patterns are seen over
many sentence shapes and lengths. `tokenize_sentences` turns them into a padded batch
and its padding mask, which pattern scores need (Clark et al. 2019, "What Does BERT Look
At?", read BERT's attention the same way, over real English text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

ENGLISH_SENTENCES: tuple[str, ...] = (
    "The kettle started to whistle just as the phone rang.",
    "She folded the map and asked a stranger for directions instead.",
    "Most of the snow had melted by the time the bus arrived.",
    "Water boils at a lower temperature on top of a high mountain.",
    "He forgot his umbrella, so he waited under the bridge until the rain stopped.",
    "Our neighbours painted their front door a bright shade of yellow.",
    "Can you tell me where the nearest post office is?",
    "The committee postponed its decision until the spring meeting.",
    "A small brown dog chased the pigeons across the square.",
    "Light from the sun takes about eight minutes to reach the earth.",
    "Please remove your shoes before entering the temple.",
    "The old library closed in the evening, but the reading room stayed open late.",
    "They planted tomatoes, beans and three rows of lettuce.",
    "I have never seen a sky that shade of orange before.",
    "The engineer checked every bolt on the bridge twice.",
    "When the power failed, the whole street went quiet.",
    "My grandmother still writes letters by hand every Sunday.",
    "The river floods the valley almost every second year.",
    "Why did the train stop in the middle of the field?",
    "He read the contract carefully and signed it the next morning.",
    "Bees communicate the location of flowers by dancing.",
    "The museum was crowded, so we went to the park instead.",
    "Turn left at the bakery and walk until you see the fountain.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Nobody noticed that the clock on the wall had stopped.",
    "The students argued about the ending of the novel for an hour.",
    "A thin layer of ice covered the pond in the morning.",
    "The company announced that it would open a new office next year.",
    "She practised the piano for an hour before dinner.",
    "If the weather is fine tomorrow, we will walk along the coast.",
    "The scientist repeated the experiment to make sure the result was real.",
    "Two cats slept in the warm patch of sunlight by the window.",
    "The village has one shop, one school and a very old church.",
    "He lost his keys again and had to climb in through the kitchen window.",
    "Rain is expected in the north, while the south stays dry.",
    "The doctor told him to drink more water and sleep earlier.",
    "Where did you put the scissors after you used them?",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Mountains form slowly as plates of rock push against each other.",
    "Our flight was delayed because of fog at the airport.",
    "She laughed so hard that she nearly dropped her coffee.",
    "The farmer sold his apples at the market every Saturday.",
    "A good map shows the roads, the rivers and the height of the land.",
    "The children built a sandcastle and watched the tide wash it away.",
    "I think the meeting starts at ten, but I am not sure.",
    "The bridge was closed for repairs during the whole summer.",
    "He wrote the answer on the board and explained each step.",
    "The forest was silent except for the sound of a distant woodpecker.",
    "Please send me the report before the end of the week.",
    "The candle flickered and then went out.",
    "After the storm, the beach was covered in seaweed and driftwood.",
    "The team won the final match by a single goal.",
    "Glass is made by heating sand until it melts.",
    "My brother prefers tea, but I usually drink coffee.",
    "The guide pointed out a hawk circling above the cliffs.",
    "Everyone in the room stood up when the judge entered.",
    "The price of bread went up twice this year.",
    "Do you remember the name of the hotel where we stayed?",
    "The painter mixed blue and yellow to make a soft green.",
    "Our teacher asked us to read the first three chapters by Monday.",
    "The lighthouse has guided ships past these rocks for two hundred years.",
    "He apologised for being late and sat down quietly at the back.",
    "The soup was too hot, so she let it cool for a few minutes.",
    "Most birds in this region fly south when the days get shorter.",
    "The lamp on the desk was the only light in the room.",
    "They counted the votes slowly and announced the result at midnight.",
    "A strong wind blew the leaves into a pile against the fence.",
    "The baker wakes up at four every morning to make the bread.",
    "Although the test was hard, most of the class passed it.",
    "The cat knocked a glass off the table and ran away.",
    "Write your name at the top of the page and begin.",
    "The city built a new tram line between the station and the university.",
    "He spent the afternoon fixing the chain on his bicycle.",
    "The moon looked enormous as it rose over the hills.",
    "Which of these two coats do you think is warmer?",
    "The letter arrived three weeks after it was posted.",
    "The workers finished the roof just before the first frost.",
    "Plants turn sunlight, water and air into sugar.",
    "We sat on the steps and watched the boats come into the harbour.",
    "The story ends with the two friends meeting again after many years.",
)
"""80 English sentences written for this toolkit (see the module docstring)."""


def tokenize_sentences(
    tokenizer: Any,
    sentences: Sequence[str] = ENGLISH_SENTENCES,
    *,
    max_length: int | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token ids and padding mask (1 real, 0 padding) of `sentences`, padded to the longest.

    Args:
        tokenizer: A Hugging Face tokenizer (it adds its own special tokens, e.g. [CLS]
            and [SEP] for BERT). Right padding with its pad id (0 when it has none).
        sentences: The texts.
        max_length: Truncate longer sentences to this many tokens (the model's `n_ctx`).
    """
    if tokenizer is None:
        raise ValueError("English sentences need a model with a tokenizer")
    if isinstance(sentences, str) or len(sentences) == 0:
        raise ValueError("sentences must be a non-empty sequence of strings")
    encoded = tokenizer(
        list(sentences), truncation=max_length is not None, max_length=max_length
    )["input_ids"]
    # Pad by hand: the tokenizer is left as it is, even one without a pad token.
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    longest = max(len(ids) for ids in encoded)
    tokens = torch.full((len(encoded), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return tokens, mask
