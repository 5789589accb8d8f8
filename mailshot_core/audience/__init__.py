"""Who receives: lists, subscribers, subscriptions, CSV import, unsubscription, an address's history.

Owns the subscriber side of the data (``mailing_list``, ``subscriber``, ``subscription``) and the
rules of an address (normalised, validated, never re-subscribed behind its back).  Imports content
(header checks), store and config; never sending, transports or feedback.
"""
