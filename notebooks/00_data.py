# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · The data: a server domain, a user domain, and the gap federated learning must close
#
# The paper's setting (§2; DESIGN claims E4–E5): a Conformer is pretrained centrally on the server's
# **proxy** data, then improved by federated learning on **users'** phones, whose speech is not the
# server's: other voices, other rooms and microphones, and words the server never saw (contacts and
# places: **new terms**), spread unevenly over many clients (non-IID, a long tail of small clients).
#
# No real multi-speaker English corpus can be installed offline, so `make data` synthesises one from
# Debian text-to-speech voices (`fedasr.corpus`; plan in DESIGN §2 and `data.md`). This notebook shows
# that corpus as a person meets it: its voices and engines, its clients and their sizes, durations,
# channel conditions, the proxy vs user vocabulary and each client's new terms; then you can listen to
# it and see the log-mel features the model gets.
#
# *Whether the speech is synthetic or real is printed from the corpus's `corpus.json` below.*

# %% tags=["parameters"]
corpus = "data/quick"  # corpus folder written by `make data`: data/tiny, data/quick or data/full
results_root = "results"  # figures are written to <results_root>/figures
max_audio = 2  # playable utterances per domain and condition
max_clients = 12  # clients listed in the per-client tables (largest first)
top_words = 15  # most frequent user-only words listed

# %%
from fedasr import notebook
nb = notebook.setup("00_data", globals())

# %%
from pathlib import Path

from IPython.display import HTML, Image, Markdown, display

from fedasr import corpus_stats, data, plotting_data
from fedasr.plotting_data import markdown_table

notebook.require(f"{corpus}/corpus.json", f"data PROFILE={Path(corpus).name}")
utts = data.load_corpus(corpus)
clients = corpus_stats.load_clients(corpus)
summary = data.summarize_corpus(corpus)  # the numbers `make summary` writes
profile = summary["profile"]
display(Markdown(data.speech_note(corpus)))
display(Markdown(markdown_table(
    [{"split": split} | row for split, row in summary["splits"].items()],
    caption=f"**`{corpus}`**: profile `{profile}`, seed {summary['seed']}. OOV: share of a split's words "
            "that never occur in proxy_train; new_terms_utterances: utterances naming a client's contact or place.")))

# %% [markdown]
# ## 1. Voices and engines
#
# A voice is an engine and a voice name; for espeak-ng (a formant synthesiser) the name is an **accent**
# (`en-us`, `en-gb-scotland`, `en-029` Caribbean, ...) plus a **variant** (`m3`, `f2`, `Annie`, ...).
# flite and festival voices were built from recordings of real speakers (CMU ARCTIC, diphone sets), so
# they sound more natural. A *speaker* is a voice with one pitch and one speaking rate. The server pool
# and the user pool share no voice: espeak-ng variants are split between them, and flite and festival
# are server-only, so every user is a voice the server never heard.

# %%
display(Markdown(markdown_table(corpus_stats.voice_pools(), caption="**The pools the generator draws voices from**")))
display(Markdown(markdown_table(corpus_stats.engine_table(utts), caption="**Engines per domain in this corpus**")))

# %%
display(Markdown(markdown_table(corpus_stats.voice_table(utts, "user"),
                                ["voice", "accent", "variant", "clients", "utterances", "hours"],
                                caption="**User voices** (each client speaks with one of them)")))
both = [r["voice"] for r in corpus_stats.voice_table(utts) if r["domains"] == "proxy+user"]
print("voices heard in both the proxy and the user domain:", ", ".join(both) or "none")

# %% [markdown]
# ## 2. Clients and their sizes: a long tail
#
# Each simulated user is one federated client with a fixed voice, pitch, rate and channel, its own
# contacts and places, and its own mix of intents (timer, navigation, messages, ...). How many
# utterances a client has is drawn from a log-normal distribution: most clients have a few, some have
# many. *Seen* clients train (`user_train`) and keep about a tenth of their utterances for testing
# personalisation (`user_heldout`); *unseen* clients (`user_test`) never train: they are the main
# federated test set.

# %%
sizes = corpus_stats.client_sizes(utts, clients)
display(Markdown(markdown_table([corpus_stats.long_tail([r["total"] for r in sizes])],
                                caption="**Utterances per client** (top_tenth_share: the share of all user "
                                        "utterances held by the largest tenth of the clients)")))
display(Image(plotting_data.client_sizes(sizes, nb.figures / f"data_{profile}_client_sizes.png")))
display(Markdown(markdown_table(sizes[:max_clients],
                                caption=f"**The {min(max_clients, len(sizes))} largest clients**")))

# %% [markdown]
# ## 3. Durations

# %%
display(Markdown(markdown_table(corpus_stats.duration_stats(utts),
                                caption="**Utterance durations per split** (seconds)")))
display(Image(plotting_data.durations(utts, nb.figures / f"data_{profile}_durations.png")))

# %% [markdown]
# ## 4. Channel conditions
#
# A channel is what lies between the voice and the model: a **room** (an impulse response simulated
# with pyroomacoustics for a reverberation time RT60 of 0.3 or 0.6 s), a **band-limit** (300–3400 Hz,
# a telephone line, or 100–7000 Hz, a cheap microphone), **additive noise** (white, or recorded hums,
# hiss and machines) at 20, 10 or 5 dB SNR, and a gain. Every user speaks through one fixed channel,
# drawn once; the proxy domain is mostly clean close-talk speech, and only a share of its utterances
# (set by the profile; more in `proxy_train` for multi-condition training) gets a random channel each.
# The manifests do not record the proxy channels: they are re-planned from the seed in `corpus.json`.

# %%
proxy_channels = corpus_stats.proxy_channels(corpus)
display(Markdown(markdown_table(corpus_stats.channel_summary(clients, proxy_channels),
                                caption="**Channels**: users (one channel per client) and proxy utterances")))

# %% [markdown]
# ## 5. Vocabulary: proxy vs user, and each client's new terms
#
# The user domain speaks the server's kind of sentences (assistant commands) but fills them with its
# own contacts and places, drawn (Faker, per locale) so that no word of them occurs in server text. A
# client's **new terms** here are the words of its transcripts that never occur in the server text
# (`proxy_train`). Most are its planned contacts and places (`planned_terms`, from the manifests); the
# rest (`other_new`) are ordinary words the server text happens to lack, more of them the smaller the
# corpus.

# %%
overlap = corpus_stats.vocabulary_overlap(utts, top=top_words)
display(Markdown(markdown_table([overlap], [k for k in overlap if k != "top_user_only"],
                                caption="**Word types and tokens**: server text (proxy_train) vs all user splits")))
display(Markdown(markdown_table(overlap["top_user_only"],
                                caption="**The most frequent user words the server text lacks**")))

# %%
terms = corpus_stats.client_new_terms(utts, clients)
display(Markdown(markdown_table(terms[:max_clients],
                                caption=f"**New terms of the first {min(max_clients, len(terms))} clients**")))

# %% [markdown]
# ## 6. Listen
#
# A few utterances per domain and channel condition (a room, a band-limit or noise on its own where the
# corpus has one), and the real-speech prompts: a real speaker recorded at 8 kHz for telephone menus.

# %%
examples = corpus_stats.pick_examples(utts, clients, proxy_channels, per_group=max_audio)
display(HTML(plotting_data.audio_table(examples)))

# %% [markdown]
# ## 7. What the model sees: log-mel spectrograms
#
# The project's front end (`fedasr.features`: 80 mel channels, 25 ms window, 10 ms hop, natural log,
# before the model's global mean/variance normalisation), one utterance per domain and condition, all on
# one colour scale. Look for the reverberant smear of a room, the empty top and bottom channels of a
# band-limit, the raised floor of noise, and the real prompts' silence above 4 kHz (above mel channel 60 or so).

# %%
shown = corpus_stats.pick_examples(utts, clients, proxy_channels, per_group=1)
feats = corpus_stats.log_mel([e["utterance"] for e in shown])
display(Image(plotting_data.log_mel_spectrograms(shown, feats, nb.figures / f"data_{profile}_log_mel.png")))
