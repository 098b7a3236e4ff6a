ALTER TABLE emails DROP COLUMN template;
DROP TABLE template_versions;
DROP TABLE templates;
