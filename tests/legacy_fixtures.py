"""Legacy SPIP databases for the import tests, written from the plugins' table declarations.

Column types follow the declarations (SPIP-Listes ``base/spiplistes_tables.php``, SPIP-Lettres
``base/lettres.php`` 4.x, Mailsubscribers 2.x ``base/mailsubscribers.php``, Mailshot
``base/mailshot.php``; see reference/original-mailshot.md §1 and §8).  Old sites keep latin1 tables
holding ISO-8859-15 bytes, so several tables below are latin1 and their text is given as raw
ISO-8859-15 bytes (``€`` is 0xA4, ``œ`` 0xBD, ``Œ`` 0xBC: what a utf8mb4 read would turn into ¤ ½ ¼).
Each scenario also holds rows the importer cannot map (trash, invalid address, dangling ids).
"""

from __future__ import annotations

import re
from typing import Any

L1 = "ENGINE=InnoDB DEFAULT CHARSET=latin1"
U8 = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
ZERO = "0000-00-00 00:00:00"


def iso(text: str) -> bytes:
    return text.encode("iso-8859-15")


SPIP_LISTES: list[tuple[str, list[tuple[Any, ...]]]] = [
    (
        f"""CREATE TABLE spip_listes (id_liste bigint(21) NOT NULL AUTO_INCREMENT, titre text NOT NULL,
        descriptif text NOT NULL, texte longblob NOT NULL, pied_page longblob NOT NULL,
        date datetime NOT NULL DEFAULT '{ZERO}', titre_message varchar(255) NOT NULL DEFAULT '',
        patron varchar(255) NOT NULL DEFAULT '', periode bigint(21) NOT NULL DEFAULT 0, lang varchar(10) NOT NULL DEFAULT '',
        maj datetime NOT NULL DEFAULT '{ZERO}', statut varchar(10) NOT NULL, email_envoi tinytext NOT NULL,
        message_auto varchar(10) NOT NULL DEFAULT '', extra longblob NULL, PRIMARY KEY (id_liste)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_listes (id_liste, titre, descriptif, texte, pied_page, statut, email_envoi) "
        "VALUES (%s, %s, '', '', '', %s, '')",
        [(1, iso("Lettre d'info"), "liste"), (2, iso("Événements"), "liste"), (3, iso("Vieille"), "poubelle")],
    ),
    (
        f"""CREATE TABLE spip_auteurs (id_auteur bigint(21) NOT NULL AUTO_INCREMENT, nom text NOT NULL,
        email tinytext NOT NULL, statut varchar(255) NOT NULL DEFAULT '0', lang varchar(10) NOT NULL DEFAULT '',
        maj timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (id_auteur)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_auteurs (id_auteur, nom, email, statut, lang) VALUES (%s, %s, %s, %s, %s)",
        [
            (1, iso("Zoé Œuvrard"), b"zoe@example.com", "6forum", "fr"),
            (2, b"Bob", b"Bob@Example.COM", "6forum", "en"),
            (3, b"Sans format", b"nf@example.com", "6forum", ""),
            (4, b"Broken", b"not-an-address", "6forum", ""),
            (5, b"Admin", b"admin@example.com", "0minirezo", "fr"),  # a site author, never a subscriber
            (6, b"Trashed", b"t@example.com", "5poubelle", ""),
        ],
    ),
    (
        f"""CREATE TABLE spip_auteurs_elargis (id bigint(21) NOT NULL AUTO_INCREMENT, id_auteur bigint(21) NOT NULL,
        `spip_listes_format` varchar(8) NOT NULL DEFAULT 'non', PRIMARY KEY (id), KEY id_auteur (id_auteur)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_auteurs_elargis (id_auteur, spip_listes_format) VALUES (%s, %s)",
        [(1, "html"), (2, "texte"), (3, "non"), (4, "html"), (6, "html")],
    ),
    (
        f"""CREATE TABLE spip_auteurs_listes (id_auteur bigint(21) NOT NULL DEFAULT 0, id_liste bigint(21) NOT NULL DEFAULT 0,
        date_inscription datetime NOT NULL DEFAULT '{ZERO}',
        statut enum('a_valider','valide') NOT NULL DEFAULT 'a_valider', format enum('html','texte') NOT NULL DEFAULT 'html',
        PRIMARY KEY (id_auteur, id_liste)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_auteurs_listes (id_auteur, id_liste, statut, date_inscription) VALUES (%s, %s, %s, %s)",
        [
            (1, 1, "valide", "2015-03-01 10:00:00"),
            (2, 1, "a_valider", ZERO),
            (3, 1, "valide", ZERO),  # format 'non': refused
            (1, 2, "valide", ZERO),
            (4, 1, "valide", ZERO),  # author 4 has an invalid address
            (2, 3, "valide", ZERO),  # list 3 is in the trash
        ],
    ),
    (
        f"""CREATE TABLE spip_courriers (id_courrier bigint(21) NOT NULL AUTO_INCREMENT, id_auteur bigint(21) NOT NULL,
        id_liste bigint(21) NOT NULL DEFAULT 0, titre text NOT NULL, texte longblob NOT NULL, message_texte longblob NOT NULL,
        date datetime NOT NULL DEFAULT '{ZERO}', statut varchar(10) NOT NULL, type varchar(10) NOT NULL,
        email_test varchar(255) NOT NULL DEFAULT '', total_abonnes bigint(21) NOT NULL DEFAULT 0,
        nb_emails_envoyes bigint(21) NOT NULL DEFAULT 0, nb_emails_non_envoyes bigint(21) NOT NULL DEFAULT 0,
        nb_emails_echec bigint(21) NOT NULL DEFAULT 0, nb_emails_html bigint(21) NOT NULL DEFAULT 0,
        nb_emails_texte bigint(21) NOT NULL DEFAULT 0, date_debut_envoi datetime NOT NULL DEFAULT '{ZERO}',
        date_fin_envoi datetime NOT NULL DEFAULT '{ZERO}', PRIMARY KEY (id_courrier)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_courriers (id_courrier, id_auteur, id_liste, titre, texte, message_texte, statut, type, "
        "total_abonnes, nb_emails_envoyes, nb_emails_non_envoyes, nb_emails_echec, date_debut_envoi, date_fin_envoi) "
        "VALUES (%s, 5, %s, %s, %s, %s, 'publie', %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                1,
                1,
                iso("Numéro 1 : 5 € l'œuvre"),
                iso("<p>__bLg__A1.B2__bLg__Bonjour, 5 € l'œuvre</p>"),
                iso("Bonjour, 5 € l'œuvre"),
                "nl",
                3,
                2,
                0,
                1,
                "2016-01-10 08:00:00",
                "2016-01-10 09:00:00",
            ),
            (2, 2, b"Interrompu", b"<p>x</p>", b"x", "auto", 10, 4, 3, 0, "2016-02-01 08:00:00", ZERO),
            (3, 1, b"Test", b"<p>t</p>", b"t", "test", 1, 1, 0, 0, ZERO, ZERO),  # a test send: not imported
            (4, 1, b"Draft", b"<p>d</p>", b"d", "nl", 0, 0, 0, 0, ZERO, ZERO),  # never sent
        ],
    ),
]

SPIP_LETTRES: list[tuple[str, list[tuple[Any, ...]]]] = [
    (
        f"CREATE TABLE spip_rubriques (id_rubrique bigint(21) NOT NULL AUTO_INCREMENT, titre text NOT NULL, "
        f"PRIMARY KEY (id_rubrique)) {L1}",
        [],
    ),
    ("INSERT INTO spip_rubriques (id_rubrique, titre) VALUES (%s, %s)", [(1, iso("Actualités")), (2, b"Culture")]),
    (
        f"""CREATE TABLE spip_abonnes (id_abonne bigint(21) NOT NULL AUTO_INCREMENT,
        objet varchar(255) NOT NULL DEFAULT 'abonnes', id_objet bigint(21) NOT NULL DEFAULT 0,
        email varchar(255) NOT NULL DEFAULT '', code varchar(255) NOT NULL DEFAULT '', nom varchar(255) NOT NULL DEFAULT '',
        format enum('html','texte','mixte') NOT NULL DEFAULT 'mixte', maj datetime NOT NULL DEFAULT '{ZERO}',
        extra longblob NULL, PRIMARY KEY (id_abonne), UNIQUE KEY code (code)) {U8}""",
        [],
    ),
    (
        "INSERT INTO spip_abonnes (id_abonne, email, code, nom, maj) VALUES (%s, %s, %s, %s, %s)",
        [
            (1, "a1@example.org", "c1", "Ann", "2014-05-01 12:00:00"),
            (2, "a2@example.org", "c2", "Ægir Ünal", ZERO),
            (3, "bad@@example.org", "c3", "Bad", ZERO),
            (4, "a4@example.org", "c4", "Left", ZERO),
        ],
    ),
    (
        f"""CREATE TABLE spip_abonnes_rubriques (id_abonne bigint(21) NOT NULL DEFAULT 0,
        id_rubrique bigint(21) NOT NULL DEFAULT 0, date_abonnement datetime NOT NULL DEFAULT '{ZERO}',
        statut enum('a_valider','valide') NOT NULL DEFAULT 'a_valider', PRIMARY KEY (id_abonne, id_rubrique)) {U8}""",
        [],
    ),
    (
        "INSERT INTO spip_abonnes_rubriques (id_abonne, id_rubrique, statut) VALUES (%s, %s, %s)",
        [
            (1, 1, "valide"),
            (2, 1, "a_valider"),
            (1, 0, "valide"),  # rubrique 0: the whole site
            (2, 2, "a_valider"),  # nobody confirmed rubrique 2: no list
            (3, 1, "valide"),  # invalid address
            (4, 1, "valide"),  # unsubscribed below
        ],
    ),
    (
        f"CREATE TABLE spip_desabonnes (id_desabonne bigint(21) NOT NULL AUTO_INCREMENT, "
        f"email varchar(255) NOT NULL DEFAULT '', PRIMARY KEY (id_desabonne), UNIQUE KEY email (email)) {U8}",
        [],
    ),
    ("INSERT INTO spip_desabonnes (email) VALUES (%s)", [("a4@example.org",), ("gone@example.org",)]),
    (
        f"""CREATE TABLE spip_lettres (id_lettre bigint(21) NOT NULL AUTO_INCREMENT, id_rubrique bigint(21) NOT NULL,
        id_secteur bigint(21) NOT NULL DEFAULT 0, titre text NOT NULL, descriptif text NOT NULL, chapo mediumtext NOT NULL,
        texte longtext NOT NULL, ps text NOT NULL, date datetime NOT NULL DEFAULT '{ZERO}', lang varchar(10) NOT NULL DEFAULT '',
        langue_choisie varchar(3) DEFAULT 'non', maj datetime NOT NULL DEFAULT '{ZERO}', message_html longtext NOT NULL,
        message_texte longtext NOT NULL, date_debut_envoi datetime NOT NULL DEFAULT '{ZERO}',
        date_fin_envoi datetime NOT NULL DEFAULT '{ZERO}', statut varchar(15) NOT NULL DEFAULT 'brouillon',
        extra longtext NULL, PRIMARY KEY (id_lettre)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_lettres (id_lettre, id_rubrique, titre, descriptif, chapo, texte, ps, message_html, "
        "message_texte, date_debut_envoi, date_fin_envoi, statut) VALUES (%s, %s, %s, '', '', '', '', %s, %s, %s, %s, %s)",
        [
            (
                1,
                1,
                iso("Lettre n°1 : 10 € d'œuvres"),
                iso("<p>Prix : 10 €, Œuvre</p>"),
                iso("Prix : 10 €"),
                "2017-06-01 07:00:00",
                "2017-06-01 07:30:00",
                "envoyee",
            ),
            (2, 1, b"Brouillon", b"<p>b</p>", b"b", ZERO, ZERO, "brouillon"),
            (3, 1, b"En cours", b"<p>c</p>", b"c", "2017-07-01 07:00:00", ZERO, "envoi_en_cours"),
        ],
    ),
    (
        f"""CREATE TABLE spip_abonnes_lettres (id_abonne bigint(21) NOT NULL DEFAULT 0, id_lettre bigint(21) NOT NULL DEFAULT 0,
        statut enum('a_envoyer','envoye','echec','annule') NOT NULL DEFAULT 'a_envoyer',
        format enum('mixte','html','texte') NOT NULL DEFAULT 'mixte', verrou tinyint NOT NULL DEFAULT 0,
        maj datetime NOT NULL DEFAULT '{ZERO}', PRIMARY KEY (id_abonne, id_lettre)) {U8}""",
        [],
    ),
    (
        "INSERT INTO spip_abonnes_lettres (id_abonne, id_lettre, statut, maj) VALUES (%s, %s, %s, '2017-06-01 07:10:00')",
        [
            (1, 1, "envoye"),
            (2, 1, "echec"),
            (4, 1, "envoye"),
            (3, 1, "envoye"),
            (99, 1, "envoye"),
            (1, 2, "a_envoyer"),  # letter 2 is a draft
            (1, 3, "envoye"),  # letter 3 is being sent: one done, one waiting
            (2, 3, "a_envoyer"),
        ],
    ),
]

MAILSHOT: list[tuple[str, list[tuple[Any, ...]]]] = [
    (
        f"""CREATE TABLE spip_mailsubscribinglists (id_mailsubscribinglist bigint(21) NOT NULL AUTO_INCREMENT,
        identifiant varchar(255) NOT NULL DEFAULT '', titre text NOT NULL, titre_public text NOT NULL,
        descriptif text NOT NULL, adresse_envoi_nom text NOT NULL, adresse_envoi_email text NOT NULL,
        date datetime NOT NULL DEFAULT '{ZERO}', statut varchar(20) NOT NULL DEFAULT 'prepa', segments text NOT NULL,
        maj timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (id_mailsubscribinglist),
        UNIQUE KEY identifiant (identifiant)) {U8}""",
        [],
    ),
    (
        "INSERT INTO spip_mailsubscribinglists (id_mailsubscribinglist, identifiant, titre, titre_public, descriptif, "
        "adresse_envoi_nom, adresse_envoi_email, statut, segments) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '')",
        [
            (1, "newsletter", "La lettre", "", "Chaque mois", "La rédaction", "Redaction@Example.org", "ouverte"),
            (2, "events", "Événements (interne)", "Événements", "", "", "", "fermee"),
            (3, "old", "Old", "", "", "", "", "poubelle"),
        ],
    ),
    (
        f"""CREATE TABLE spip_mailsubscribers (id_mailsubscriber bigint(21) NOT NULL AUTO_INCREMENT,
        email varchar(255) NOT NULL DEFAULT '', nom text NOT NULL, optin text NOT NULL,
        date datetime NOT NULL DEFAULT '{ZERO}', statut varchar(20) NOT NULL DEFAULT 'prepa',
        jeton char(25) NOT NULL DEFAULT '', lang varchar(10) NOT NULL DEFAULT '',
        maj timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (id_mailsubscriber), UNIQUE KEY email (email)) {U8}""",
        [],
    ),
    (
        "INSERT INTO spip_mailsubscribers (id_mailsubscriber, email, nom, optin, statut, lang, date) "
        "VALUES (%s, %s, %s, '', %s, %s, '2018-01-01 00:00:00')",
        [
            (1, "m1@example.net", "Mélanie", "valide", "fr"),
            (2, "m2@example.net", "", "prop", ""),
            (3, "m3@example.net", "", "refuse", ""),
            (4, "m4@example.net", "", "poubelle", ""),
            (5, "M5@Example.NET", "Five", "valide", "en"),
        ],
    ),
    (
        """CREATE TABLE spip_mailsubscriptions (id_mailsubscriber bigint(21) NOT NULL DEFAULT 0,
        id_mailsubscribinglist bigint(21) NOT NULL DEFAULT 0, id_segment smallint NOT NULL DEFAULT 0,
        statut varchar(20) NOT NULL DEFAULT 'prop', actualise_segments tinyint NOT NULL DEFAULT 0,
        maj timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (id_mailsubscriber, id_mailsubscribinglist, id_segment)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        [],
    ),
    (
        "INSERT INTO spip_mailsubscriptions (id_mailsubscriber, id_mailsubscribinglist, id_segment, statut) "
        "VALUES (%s, %s, %s, %s)",
        [
            (1, 1, 0, "valide"),
            (1, 1, 2, "valide"),  # a segment of list 1: not a membership of its own
            (2, 1, 0, "prop"),
            (3, 1, 0, "refuse"),
            (5, 1, 0, "valide"),
            (5, 2, 0, "valide"),
            (4, 1, 0, "valide"),  # subscriber 4 is in the trash
            (1, 3, 0, "valide"),  # list 3 is in the trash
        ],
    ),
    (
        f"""CREATE TABLE spip_mailshots (id_mailshot bigint(21) NOT NULL AUTO_INCREMENT, id varchar(32) NOT NULL DEFAULT '',
        sujet text NOT NULL, html longtext NOT NULL, texte longtext NOT NULL, listes text NOT NULL,
        graceful tinyint(1) NOT NULL DEFAULT 0, from_name text NOT NULL, from_email text NOT NULL,
        total bigint(21) NOT NULL DEFAULT 0, current bigint(21) NOT NULL DEFAULT 0, failed bigint(21) NOT NULL DEFAULT 0,
        nb_read bigint(21) NOT NULL DEFAULT 0, nb_clic bigint(21) NOT NULL DEFAULT 0, nb_spam bigint(21) NOT NULL DEFAULT 0,
        date datetime NOT NULL DEFAULT '{ZERO}', date_start datetime NOT NULL DEFAULT '{ZERO}',
        statut varchar(20) NOT NULL DEFAULT 'processing', maj timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,
        PRIMARY KEY (id_mailshot), KEY statut (statut)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_mailshots (id_mailshot, sujet, html, texte, listes, graceful, from_name, from_email, total, "
        "current, failed, nb_read, nb_clic, nb_spam, date, date_start, statut) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                1,
                iso("Hello 5 € world"),
                iso("<p>5 €</p>"),
                iso("5 €"),
                b"newsletter,events+1",
                1,
                iso("Équipe"),
                b"news@example.net",
                3,
                3,
                1,
                1,
                0,
                0,
                "2019-03-02 10:00:00",
                "2019-03-02 09:00:00",
                "end",
            ),
            (
                2,
                b"Archived",
                b"<p>a</p>",
                b"a",
                b"newsletter",
                0,
                b"",
                b"",
                100,
                100,
                5,
                40,
                10,
                1,
                "2018-05-01 10:00:00",
                "2018-05-01 09:00:00",
                "archive",
            ),
            (
                3,
                b"Stopped half-way",
                b"<p>s</p>",
                b"s",
                b"newsletter",
                0,
                b"",
                b"",
                2,
                1,
                0,
                0,
                0,
                0,
                "2019-04-01 10:00:00",
                "2019-04-01 09:00:00",
                "processing",
            ),
            (4, b"Trashed", b"<p>t</p>", b"t", b"newsletter", 0, b"", b"", 0, 0, 0, 0, 0, 0, ZERO, ZERO, "poubelle"),
            (5, b"Cancelled", b"<p>c</p>", b"c", b"newsletter", 0, b"", b"", 1, 0, 0, 0, 0, 0, ZERO, ZERO, "cancel"),
            (6, b"Scheduled", b"<p>s</p>", b"s", b"newsletter", 0, b"", b"", 0, 0, 0, 0, 0, 0, ZERO, ZERO, "init"),
        ],
    ),
    (
        # raw_feedback: newest Mailshot ("quoi|raw" of the last feedback that changed the row; its type is not
        # documented, text here).
        f"""CREATE TABLE spip_mailshots_destinataires (id_mailshot bigint(21) NOT NULL, email varchar(255) NOT NULL,
        date datetime NOT NULL DEFAULT '{ZERO}', statut char(4) NOT NULL DEFAULT 'todo', `try` tinyint NOT NULL DEFAULT 0,
        raw_feedback text NULL,
        PRIMARY KEY (id_mailshot, email), KEY email (email), KEY statut (statut)) {L1}""",
        [],
    ),
    (
        "INSERT INTO spip_mailshots_destinataires (id_mailshot, email, statut, `try`, raw_feedback, date) "
        "VALUES (%s, %s, %s, %s, %s, '2019-03-02 09:30:00')",
        [
            (1, "m1@example.net", "read", 1, "read|open"),
            (1, "M5@example.net", "sent", 1, None),
            (1, "m2@example.net", "fail", 5, "hard_bounce|bounce"),
            (1, "m3@example.net", "spam", 1, "spam|spam_complaint"),
            (1, "m6@example.net", "spam", 1, "unsub|unsub"),
            (1, "not an address", "sent", 1, None),
            (3, "m1@example.net", "sent", 1, None),
            (3, "M5@example.net", "todo", 0, None),
            (5, "m1@example.net", "todo", 0, None),  # sending 5 is cancelled: its waiting rows are killed
        ],
    ),
]

SCENARIOS = {"spip-listes": SPIP_LISTES, "spip-lettres": SPIP_LETTRES, "mailshot": MAILSHOT}


def load(conn: Any, scenario: list[tuple[str, list[tuple[Any, ...]]]], prefix: str = "spip_") -> None:
    """Run a scenario's statements on a PyMySQL connection (non-strict SQL mode, as old SPIP servers ran)."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")  # zero dates, like the MySQL 5 servers SPIP sites ran on
        for sql, rows in scenario:
            sql = re.sub(r"\bspip_(?!listes_format)", prefix, sql)
            if rows:
                cur.executemany(sql, rows)
            else:
                cur.execute(sql)
