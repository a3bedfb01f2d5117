-- pppgate: the same as clients.d/pppgate-nas.conf for deployments with `read_clients = yes` in
-- FreeRADIUS's sql module. One row per NAS-IP-Address; the type must not be 'other'.
INSERT INTO nas (nasname, shortname, type, secret, description)
VALUES ('192.0.2.1', 'lns-1', 'pppgate', 'change-me', 'pppgate concentrator');
