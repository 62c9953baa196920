"""Writes prompts/agent/no_field_questions.jsonl: questions that ask for something no tool result field holds (the
patient's blood pressure, a lab value, the scanner's price) and questions that a field does answer (slice thickness,
the contrast agent in the header, a structure's volume), in en/es/fr/de/pt.

Each template is one way of asking, filled both with things no field holds and with things a field answers, so only
what is asked for tells the classes apart. The split is by template (a fixed list below): the test half holds ways of
asking that training never saw, and a few things only the test half asks for (`thing` names it, so the benchmark
counts the ones training never saw).

    python -m evals.make_no_field_bank
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "prompts" / "agent" / "no_field_questions.jsonl"

# Things no result field holds: the patient's body, vital signs, labs and history; the scanner and the paperwork.
ABSENT = {
    "en": ["blood pressure", "heart rate", "weight", "blood group", "creatinine", "INR", "allergies", "temperature",
           "price of the scanner", "cost of this scan", "name of the referring doctor", "waiting time for a report",
           "room number", "insurance number", "oxygen saturation", "height", "medication list", "glucose",
           "scanner's serial number", "appointment time", "platelet count", "BMI", "smoking history", "potassium",
           "haemoglobin", "hospital's phone number"],
    "es": ["presión arterial", "peso", "grupo sanguíneo", "creatinina", "frecuencia cardiaca", "alergias",
           "precio del escáner", "coste de esta prueba", "número de habitación", "temperatura", "glucemia", "talla",
           "nombre del médico que lo pidió", "hemoglobina"],
    "fr": ["tension artérielle", "poids", "groupe sanguin", "créatinine", "fréquence cardiaque", "allergies",
           "prix du scanner", "coût de cet examen", "numéro de chambre", "température", "glycémie", "taille",
           "nom du médecin prescripteur", "hémoglobine"],
    "de": ["Blutdruck", "Gewicht", "Blutgruppe", "Kreatininwert", "Herzfrequenz", "Allergien", "Preis des Scanners",
           "Kosten dieser Untersuchung", "Zimmernummer", "Temperatur", "Blutzucker", "Körpergröße", "Name des Zuweisers",
           "Hämoglobinwert"],
    "pt": ["pressão arterial", "peso", "tipo sanguíneo", "creatinina", "frequência cardíaca", "alergias",
           "preço do tomógrafo", "custo deste exame", "número do quarto", "temperatura", "glicemia", "altura",
           "nome do médico solicitante", "hemoglobina"],
}
# Things a field does answer (describe_scan's geometry and header fields, the other tools' results).
PRESENT = {
    "en": ["slice thickness", "spacing between slices", "matrix", "field of view", "pixel spacing", "number of slices",
           "modality", "orientation", "file format", "contrast agent in the header", "body part in the header",
           "series description", "mean intensity", "voxel count", "volume of the left hippocampus", "brain volume",
           "anomaly score", "HU at the centre", "ICD-10 code for stroke", "intensity at 100, 100, 50",
           "distance from 10,10,10 to 40,10,10", "lateral ventricle volume"],
    "es": ["grosor de corte", "espaciado entre cortes", "matriz", "campo de visión", "número de cortes", "modalidad",
           "volumen del hipocampo izquierdo", "volumen cerebral", "código CIE-10 del ictus",
           "contraste que indica la cabecera", "intensidad en el centro", "tamaño de píxel"],
    "fr": ["épaisseur de coupe", "espacement entre les coupes", "matrice", "champ de vue", "nombre de coupes",
           "modalité", "volume de l'hippocampe gauche", "volume du cerveau", "code CIM-10 de l'AVC",
           "produit de contraste indiqué dans l'en-tête", "intensité au centre", "taille du pixel"],
    "de": ["Schichtdicke", "Schichtabstand", "Matrix", "Sichtfeld", "Anzahl der Schichten", "Modalität",
           "Volumen des linken Hippocampus", "Hirnvolumen", "ICD-10-Code für Schlaganfall", "Kontrastmittel laut Header",
           "Intensität in der Mitte", "Pixelgröße"],
    "pt": ["espessura do corte", "espaçamento entre cortes", "matriz", "campo de visão", "número de cortes",
           "modalidade", "volume do hipocampo esquerdo", "volume cerebral", "código CID-10 do AVC",
           "contraste indicado no cabeçalho", "intensidade no centro", "tamanho do pixel"],
}
# The last few things of each list are asked only in test templates: things training never saw.
HELD_OUT_THINGS = {lang: set(ABSENT[lang][-4:] + PRESENT[lang][-2:]) for lang in ABSENT}

# (id, language, frame). Every frame is filled with things no field holds and with things a field answers, so the
# way of asking says nothing about the class: only what is asked for does.
TEMPLATES = [
    ("en-what", "en", "What is the patient's {x}?"),
    ("en-terse", "en", "{x}?"),
    ("en-scan", "en", "Can you tell me the {x} from this scan?"),
    ("en-show", "en", "does the scan show the {x}?"),
    ("en-lay", "en", "my mum had this scan, what's her {x}?"),
    ("en-nonnative", "en", "please you tell me {x} of this patient"),
    ("en-form", "en", "I need the {x} for the form, what is it?"),
    ("en-know", "en", "do you know the {x}?"),
    ("en-which", "en", "which is the {x} please"),
    ("en-header", "en", "does the DICOM header have the {x}?"),
    ("en-read", "en", "read the {x} off the images"),
    ("en-check", "en", "quick check, {x} ok?"),
    ("en-give", "en", "give me the {x}"),
    ("en-report", "en", "for the report I need the {x}"),
    ("es-what", "es", "¿Cuál es el {x}?"),
    ("es-terse", "es", "¿{x}?"),
    ("es-scan", "es", "¿El estudio muestra el {x}?"),
    ("es-need", "es", "Necesito el dato de {x}"),
    ("fr-what", "fr", "Quel est le {x} ?"),
    ("fr-terse", "fr", "{x} ?"),
    ("fr-scan", "fr", "L'examen montre-t-il le {x} ?"),
    ("fr-need", "fr", "J'ai besoin de la valeur : {x}"),
    ("de-what", "de", "Wie ist der Wert für {x}?"),
    ("de-terse", "de", "{x}?"),
    ("de-scan", "de", "Zeigt der Scan {x}?"),
    ("de-need", "de", "Ich brauche {x}, bitte"),
    ("pt-what", "pt", "Qual é o {x}?"),
    ("pt-terse", "pt", "{x}?"),
    ("pt-scan", "pt", "O exame mostra o {x}?"),
    ("pt-need", "pt", "Preciso do valor de {x}"),
]

# Held-out ways of asking, about a third per language; fixed here so the split never moves.
TEST_TEMPLATES = {"en-show", "en-nonnative", "en-know", "en-read", "en-report", "es-scan", "fr-need", "de-scan",
                  "pt-terse"}
PER_CLASS = 8  # fillings of each frame per class


def phrasings(template: str, things: list[str], lang: str, test: bool, rng: random.Random) -> list[tuple[str, str]]:
    """(text, the thing asked about) for one frame and class; held-out things only in test templates."""
    things = [t for t in things if test or t not in HELD_OUT_THINGS[lang]]
    rng.shuffle(things)
    return [(template.format(x=thing), thing) for thing in things[:PER_CLASS]]


def main() -> None:
    rng = random.Random(30)
    rows = []
    for template_id, lang, template in TEMPLATES:
        test = template_id in TEST_TEMPLATES
        for no_field, things in ((True, ABSENT[lang]), (False, PRESENT[lang])):
            for text, thing in phrasings(template, things, lang, test, rng):
                rows.append({"text": text, "no_field": no_field, "lang": lang, "template": template_id, "thing": thing,
                             "split": "test" if test else "dev"})
    OUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    counts = {(s, d): sum(r["split"] == s and r["no_field"] == d for r in rows) for s in ("dev", "test") for d in (True, False)}
    print(f"{len(rows)} questions -> {OUT}; " +
          ", ".join(f"{s} {'no field' if d else 'field'} {n}" for (s, d), n in counts.items()))


if __name__ == "__main__":
    main()
