-- Reserved: this number belongs to another change of the schema (merged separately).
SELECT 1;
