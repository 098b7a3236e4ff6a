-- Bulk rows for the search benchmark: emails :first to :last, as a mailbox of
-- notifications would hold them. scripts/bench.sh runs two ranges at once with the GIN
-- index dropped, then rebuilds it as the migration defines it. Recipients over 50,000
-- users and 20 domains; subjects from 24 templates with a number; messages of 40 words
-- drawn with a strong skew from 110, so a few words are in most messages and the last
-- ones (walrus, quartz) in few. A third carry a campaign tag (seven campaigns), one in
-- 997 the tag plan:enterprise; one in 250 failed. Deterministic: hashes, not random().
\set ON_ERROR_STOP on
SET synchronous_commit = off;
WITH words AS (
  SELECT string_to_array(
    'order invoice payment receipt shipping delivery account password reset welcome ' ||
    'newsletter update security alert meeting schedule report weekly monthly summary ' ||
    'customer support ticket request refund return subscription renewal trial upgrade ' ||
    'plan discount offer coupon sale event webinar invitation reminder confirmation ' ||
    'booking reservation flight hotel travel itinerary statement balance transfer bank ' ||
    'card expiry verification code login device location activity profile settings ' ||
    'privacy policy terms change notice document contract signature approval review ' ||
    'feedback survey rating product release feature roadmap launch beta download ' ||
    'install backup storage quota limit usage billing tax annual quarterly budget ' ||
    'forecast project milestone deadline task assigned comment mention team project ' ||
    'garden kayak telescope violin origami saffron glacier lantern quartz walrus', ' ') AS w
), subjects AS (
  SELECT ARRAY[
    'Your order has shipped', 'Invoice available', 'Payment received', 'Password reset requested',
    'Welcome to the team', 'Weekly report', 'Security alert: new login', 'Meeting reminder',
    'Your subscription renews soon', 'Refund processed', 'Ticket updated', 'Monthly statement',
    'Flight itinerary', 'Hotel reservation confirmed', 'Verify your email address', 'New comment on your task',
    'Quarterly budget review', 'Product release notes', 'Webinar invitation', 'Survey: rate your experience',
    'Backup completed', 'Storage quota almost full', 'Contract ready for signature', 'Delivery delayed'] AS s
), domains AS (
  SELECT ARRAY[
    'example.com', 'example.org', 'example.net', 'mail.example.com', 'corp.example',
    'shop.example', 'acme.test', 'globex.test', 'initech.test', 'umbrella.test',
    'hooli.test', 'stark.test', 'wayne.test', 'wonka.test', 'tyrell.test',
    'cyberdyne.test', 'soylent.test', 'aperture.test', 'massive.test', 'vandelay.test'] AS d
), rows AS (
  SELECT g, gen_random_uuid() AS id FROM generate_series(:first, :last) g
), messages AS (
  INSERT INTO email_messages (email_id, address_from, address_to, subject, message, created_at, tags)
  SELECT id,
         'noreply@shop.example',
         'user' || (abs(hashint8(g)) % 50000) || '@' || d[1 + abs(hashint8(g + 7)) % 20],
         s[1 + abs(hashint8(g + 13)) % 24] || ' #' || g,
         (SELECT string_agg(w[1 + floor(cardinality(w) * power((abs(hashint8(g * 64 + i)) % 1000000)::float8 / 1e6, 3))::int], ' ')
            FROM generate_series(1, 40) i),
         now() - make_interval(secs => g * 30),
         CASE WHEN g % 997 = 0 THEN '{"plan": "enterprise"}'::jsonb
              WHEN g % 3 = 0 THEN jsonb_build_object('campaign', 'spring-' || (g / 3 % 7)) END
  FROM rows, words, subjects, domains
  RETURNING email_id
)
INSERT INTO email_deliveries (email_id, status, attempts, message_created_at, updated_at, sent_at,
                              next_attempt_at)
SELECT id, CASE WHEN g % 250 = 0 THEN 'failed' ELSE 'sent' END, 1,
       now() - make_interval(secs => g * 30), now() - make_interval(secs => g * 30),
       now() - make_interval(secs => g * 30 - 2), NULL
FROM rows WHERE id IN (SELECT email_id FROM messages);
