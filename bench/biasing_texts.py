"""Sentences full of rare names and jargon, with their target terms, for bench/biasing.py.

Written for this benchmark; none of them, nor their terms, appears in bench/texts.py or tests/.
Each sentence holds one to three target terms, said exactly as listed: people's names from
many cultures, places, drugs, software and music. A term that is several words ("Linh Nguyen")
counts as one. No term is part of another, so each can be searched for on its own; a few keep
their diacritics ("Quiñones", "Tromsø"), which an English-only model has to be told about.
"""

SENTENCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Siobhan asked whether the Kubernetes cluster had been upgraded over the weekend.",
        ("Siobhan", "Kubernetes"),
    ),
    (
        "Professor Okonkwo started the patient on pembrolizumab after the second scan.",
        ("Okonkwo", "pembrolizumab"),
    ),
    (
        "Xochitl Quiñones flew in from Oaxaca to present her research on maize.",
        ("Xochitl Quiñones", "Oaxaca"),
    ),
    (
        "The concert opens with Tchaikovsky and ends with a symphony by Dvořák.",
        ("Tchaikovsky", "Dvořák"),
    ),
    (
        "Linh Nguyen moved the billing records from the old server to PostgreSQL.",
        ("Linh Nguyen", "PostgreSQL"),
    ),
    (
        "Our hiking trip starts in Reykjavik and ends at the edge of Vatnajökull.",
        ("Reykjavik", "Vatnajökull"),
    ),
    (
        "Aoife booked a small cottage near Ballyshannon for the last week of June.",
        ("Aoife", "Ballyshannon"),
    ),
    (
        "The nurse asked whether Wojciechowski was allergic to amoxicillin.",
        ("Wojciechowski", "amoxicillin"),
    ),
    (
        "Priya Raghunathan rewrote the parser and profiled it with Valgrind.",
        ("Priya Raghunathan", "Valgrind"),
    ),
    (
        "Please restart the nginx proxy before you redeploy the Grafana dashboards.",
        ("nginx", "Grafana"),
    ),
    (
        "Chiamaka Eze will chair the panel in Enugu on Thursday morning.",
        ("Chiamaka Eze", "Enugu"),
    ),
    (
        "Professor Adeyemi compared adalimumab with a placebo in forty patients.",
        ("Adeyemi", "adalimumab"),
    ),
    (
        "Takahashi sent the Shinkansen tickets for our trip to Kanazawa.",
        ("Takahashi", "Shinkansen", "Kanazawa"),
    ),
    (
        "Oluwaseun found the memory leak in the Elasticsearch indexer.",
        ("Oluwaseun", "Elasticsearch"),
    ),
    (
        "The team in Tbilisi uses Terraform to manage every environment.",
        ("Tbilisi", "Terraform"),
    ),
    (
        "Ingrid Solberg presented the new results at the conference in Tromsø.",
        ("Ingrid Solberg", "Tromsø"),
    ),
    (
        "The dose of levothyroxine was raised after the last blood test.",
        ("levothyroxine",),
    ),
    (
        "Mehmet Yilmaz opened a little bakery near Kadikoy last year.",
        ("Mehmet Yilmaz", "Kadikoy"),
    ),
    (
        "Kafka streams the sensor events into a ClickHouse table every minute.",
        ("Kafka", "ClickHouse"),
    ),
    (
        "Saoirse teaches music at a village school in Connemara.",
        ("Saoirse", "Connemara"),
    ),
    (
        "The radiologist suspected sarcoidosis and asked for a bronchoscopy.",
        ("sarcoidosis", "bronchoscopy"),
    ),
    (
        "Anjali Venkataraman leads the group that trains our PyTorch models.",
        ("Anjali Venkataraman", "PyTorch"),
    ),
    (
        "Our flight to Ouagadougou stops in Casablanca for two hours.",
        ("Ouagadougou", "Casablanca"),
    ),
    (
        "Grzegorz called from Szczecin to say that the shipment would be late.",
        ("Grzegorz", "Szczecin"),
    ),
    (
        "The app keeps its settings in SQLite and syncs them through Supabase.",
        ("SQLite", "Supabase"),
    ),
    (
        "Thandiwe Mthembu won the regional chess tournament in Polokwane.",
        ("Thandiwe Mthembu", "Polokwane"),
    ),
    (
        "Give him ondansetron for the nausea and check his potassium again.",
        ("ondansetron",),
    ),
    (
        "Our Ansible playbook installs Prometheus on every node in the rack.",
        ("Ansible", "Prometheus"),
    ),
    (
        "The pianist played Rachmaninoff and then a short prelude by Scriabin.",
        ("Rachmaninoff", "Scriabin"),
    ),
    (
        "Kealoha showed us the quietest beaches around Kailua.",
        ("Kealoha", "Kailua"),
    ),
    (
        "Dagmar Hoffmeister runs the logistics office in Wuppertal.",
        ("Dagmar Hoffmeister", "Wuppertal"),
    ),
    (
        "We replaced the old cron jobs with Airflow and send the logs to Splunk.",
        ("Airflow", "Splunk"),
    ),
    (
        "Professor Abernathy suggested semaglutide along with a change of diet.",
        ("Abernathy", "semaglutide"),
    ),
    (
        "Zhang Yiwen showed the prototype to investors in Shenzhen on Monday.",
        ("Zhang Yiwen", "Shenzhen"),
    ),
    (
        "The ferry from Stornoway to Ullapool was cancelled because of the storm.",
        ("Stornoway", "Ullapool"),
    ),
    (
        "The whole frontend is written in TypeScript and bundled with Webpack.",
        ("TypeScript", "Webpack"),
    ),
    (
        "Youssef El Amrani rented a riad in the old town for the whole family.",
        ("Youssef El Amrani", "riad"),
    ),
    (
        "The lab measured troponin twice before they ruled out a heart attack.",
        ("troponin",),
    ),
    (
        "Esperanza Villalobos sells handmade pottery at the Sunday market in Cuenca.",
        ("Esperanza Villalobos", "Cuenca"),
    ),
    (
        "Vasilisa Kuznetsova left Novosibirsk to study chemistry in Montreal.",
        ("Vasilisa Kuznetsova", "Novosibirsk"),
    ),
)

# Every target once, in sentence order: the shared glossary a deployment would configure.
GLOSSARY: tuple[str, ...] = tuple(dict.fromkeys(t for _, terms in SENTENCES for t in terms))
